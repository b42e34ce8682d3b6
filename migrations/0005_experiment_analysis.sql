-- How an experiment's results are judged (bunting-experiments' AnalysisSettings, as JSON: alpha,
-- sides, sequential and its tuning, engine, prior), chosen at creation and never changed. The
-- settings are a view over the counted aggregates: nothing counted depends on them. NULL is the
-- defaults (frequentist, two-sided, alpha 0.05, sequential with tuning 5000), which is what every
-- experiment created before this column existed was analysed with.
ALTER TABLE experiments
    ADD COLUMN analysis jsonb
        CHECK (analysis IS NULL OR jsonb_typeof(analysis) = 'object');
