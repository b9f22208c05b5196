--[[
  Commits a staged redis branch: applies its writes in order, releases the locks this
  gid holds, deletes the staged record. Idempotent: no record means already committed.
  Every operation is checked before the first write, so the branch applies entirely or
  not at all (Redis does not roll a script back).

  Input:
    KEYS[1]              the staged record, tcx:{T}:staged:<gid>
    KEYS[2i], KEYS[2i+1] each data key of the record and its lock key (i = 1..n)
    ARGV[1]  gid
    ARGV[2]  the record's `keys` field exactly as the caller read it (to build KEYS)

  Output: {code, op, detail}
     1  applied, unlocked, record deleted
     0  no staged record: already committed
    -4  an operation cannot apply any more: a client outside the coordinator changed the
        key (wrong type, not an integer). Nothing applied; record and locks stay.
    -5  the staged record belongs to another gid
    -6  ARGV[2] differs from the record's keys, or KEYS do not cover them: re-read, retry
]]
--- @include "_branch.lua"

local gid = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return { 0, 0, '' } end
local record = redis.call('HMGET', KEYS[1], 'gid', 'ops', 'keys')
if record[1] ~= gid then return { -5, 0, '' } end
if record[3] ~= ARGV[2] then return { -6, 0, '' } end
local locks = declared_locks()
if not covers(record[3], locks) then return { -6, 0, '' } end
local ops = cjson.decode(record[2])
local missing = undeclared(ops, locks)
if missing > 0 then return { -6, missing, '' } end

local states = {}
for i, op in ipairs(ops) do
  local code = simulate(states, op, false)
  if code ~= 0 then return { code, i, '' } end
end

for _, op in ipairs(ops) do
  local kind = op.op
  if kind == 'set' then
    redis.call('SET', op.key, op.value)
  elseif kind == 'del' then
    redis.call('DEL', op.key)
  elseif kind == 'incrby' then
    redis.call('INCRBY', op.key, op.by)
  elseif kind == 'hset' then
    redis.call('HSET', op.key, op.field, op.value)
  end
end
release_locks(gid)
redis.call('DEL', KEYS[1])
return { 1, 0, '' }
