-- wrk script: GET the state of a random client of the data set that
-- `connstate-bench query --clients 1000000` writes (same naming).
math.randomseed(42)

local function client_name(i)
  local r = i % 10
  if r <= 5 then
    return string.format("d:local:type%d:dev%07d", i % 20, i)
  elseif r <= 7 then
    return string.format("g:local:gw%d:gw%07d", i % 5, i)
  elseif r == 8 then
    return string.format("a:local:app%07d", i)
  else
    return string.format("client-%07d", i)
  end
end

request = function()
  local i = math.random(0, 999999)
  return wrk.format("GET", "/api/v0002/clientconnectionstates/" .. client_name(i))
end
