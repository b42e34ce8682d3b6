-- wrk: Bunting's OFREP bulk evaluation, cycling through 1,000 users (a third in the countries
-- the flags target). With ETAG set, every request revalidates one user's answer instead.
local users = {}
for i = 1, 1000 do
  local country = ({"NO", "US", "DE"})[(i % 3) + 1]
  users[i] = string.format('{"context":{"targetingKey":"user-%d","country":"%s"}}', i, country)
end
local n = 0
local etag = os.getenv("ETAG")
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
if etag and etag ~= "" then
  wrk.headers["if-none-match"] = etag
  wrk.body = users[1]
end
request = function()
  if etag and etag ~= "" then
    return wrk.format()
  end
  n = (n % 1000) + 1
  return wrk.format(nil, nil, nil, users[n])
end
