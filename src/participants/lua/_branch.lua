--[[
  Shared fragment of prepare.lua, commit.lua and abort.lua, inlined by the loader in
  redis-participant.ts wherever a script has the line `--- @include "_branch.lua"`.

  KEYS layout of every script: KEYS[1] is the branch's staged record, then one pair per
  distinct data key: KEYS[2i] the data key, KEYS[2i+1] its lock key (i = 1..n).

  Operations (the staged record's `ops`, JSON): {op, key, value?, field?, by?, min?, max?,
  absent?}; integers are decimal strings, `absent` marks `expect` of a missing key.
]]
local SAFE_INTEGER = 9007199254740991

-- data key -> lock key, from the declared KEYS; nil when KEYS are not 1 + 2n
local function declared_locks()
  if #KEYS % 2 ~= 1 then return nil end
  local locks = {}
  for i = 2, #KEYS, 2 do locks[KEYS[i]] = KEYS[i + 1] end
  return locks
end

-- true when the declared pairs are exactly the data keys recorded in keys_json
local function covers(keys_json, locks)
  if locks == nil then return false end
  local keys = cjson.decode(keys_json)
  if #keys * 2 + 1 ~= #KEYS then return false end
  for _, key in ipairs(keys) do
    if locks[key] == nil then return false end
  end
  return true
end

-- index of the first operation whose key is not declared, else 0
local function undeclared(ops, locks)
  for i, op in ipairs(ops) do
    if type(op.key) ~= 'string' or locks[op.key] == nil then return i end
  end
  return 0
end

-- Redis' own integer syntax (what INCRBY accepts), limited to the doubles Lua counts exactly
local function parse_integer(s)
  if s == '0' then return 0 end
  if type(s) ~= 'string' or #s > 17 or not string.match(s, '^%-?[1-9]%d*$') then return nil end
  local n = tonumber(s)
  if n == nil or n > SAFE_INTEGER or n < -SAFE_INTEGER then return nil end
  return n
end

-- simulated state of a key: {t = TYPE, v = string value when t == 'string'}
local function key_state(states, key)
  local s = states[key]
  if s == nil then
    local t = redis.call('TYPE', key)['ok']
    s = { t = t }
    if t == 'string' then s.v = redis.call('GET', key) end
    states[key] = s
  end
  return s
end

-- Applies one operation to the simulated states. Returns 0, or:
--   -2 expect mismatch, -3 incrby outside [min, max]   (only when check_guards)
--   -4 the operation cannot apply (wrong type, not an integer, beyond +-(2^53-1))
--   -6 unknown operation
local function simulate(states, op, check_guards)
  local s = key_state(states, op.key)
  local kind = op.op
  if kind == 'set' then
    s.t, s.v = 'string', op.value
  elseif kind == 'del' then
    s.t, s.v = 'none', nil
  elseif kind == 'hset' then
    if s.t ~= 'none' and s.t ~= 'hash' then return -4 end
    s.t, s.v = 'hash', nil
  elseif kind == 'incrby' then
    local current = 0
    if s.t == 'string' then
      current = parse_integer(s.v)
      if current == nil then return -4 end
    elseif s.t ~= 'none' then
      return -4
    end
    local result = current + tonumber(op.by)
    if result > SAFE_INTEGER or result < -SAFE_INTEGER then return -4 end
    if check_guards then
      if op.min ~= nil and result < tonumber(op.min) then return -3 end
      if op.max ~= nil and result > tonumber(op.max) then return -3 end
    end
    s.t, s.v = 'string', string.format('%d', result)
  elseif kind == 'expect' then
    if check_guards then
      if op.absent then
        if s.t ~= 'none' then return -2 end
      elseif s.t ~= 'string' or s.v ~= op.value then
        return -2
      end
    end
  else
    return -6
  end
  return 0
end

-- Releases the locks this gid holds on the declared keys.
local function release_locks(gid)
  for i = 3, #KEYS, 2 do
    if redis.call('GET', KEYS[i]) == gid then redis.call('DEL', KEYS[i]) end
  end
end
