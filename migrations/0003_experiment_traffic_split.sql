-- The share of users each arm of an experiment is meant to get, as {"arm": weight, ...} with
-- every arm named (bunting-experiments' TrafficSplit::Weighted). NULL is an even split, which is
-- what every experiment created before this column existed was judged against.
ALTER TABLE experiments
    ADD COLUMN traffic_split jsonb
        CHECK (traffic_split IS NULL OR jsonb_typeof(traffic_split) = 'object');
