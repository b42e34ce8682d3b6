-- wrk: Unleash Edge's frontend API (POST /api/frontend), the same 1,000 users as bunting.lua.
local users = {}
for i = 1, 1000 do
  local country = ({"NO", "US", "DE"})[(i % 3) + 1]
  users[i] = string.format('{"userId":"user-%d","properties":{"country":"%s"}}', i, country)
end
local n = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = os.getenv("EDGE_TOKEN")
request = function()
  n = (n % 1000) + 1
  return wrk.format(nil, nil, nil, users[n])
end
