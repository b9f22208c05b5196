--[[
  Prepares a redis branch: checks locks and guards and, in 'stage' mode, writes the staged
  record and takes the locks, all atomically. A staged record on a server with
  appendonly yes + appendfsync always is the branch's durable yes vote.

  Input:
    KEYS[1]              the staged record, tcx:{T}:staged:<gid> (a hash)
    KEYS[2i], KEYS[2i+1] a data key the branch touches and its lock key, tcx:lock:{T}:<key>
                         (i = 1..n; variable, so numkeys is passed by the caller)
    ARGV[1]  gid
    ARGV[2]  mode: 'stage' (the branch writes) or 'check' (guards only: nothing is staged)
    ARGV[3]  the operations, JSON array (see _branch.lua)
    ARGV[4]  the data keys, JSON array, stored for commit and abort
    ARGV[5]  created, milliseconds since the epoch

  Output: {code, op, detail} -- op: 1-based index of the failing operation, else 0
     1  staged, locks taken: vote yes
     2  already staged by an earlier call for this gid: vote yes
     3  'check' mode, every guard holds: vote read-only
    -1  a key is locked by another prepared branch (detail: its gid)
    -2  an expect guard does not match
    -3  an incrby result leaves [min, max]
    -4  an operation cannot apply (wrong type, not an integer, beyond +-(2^53-1))
    -5  the staged record belongs to another gid
    -6  malformed call: KEYS are not exactly the pairs of ARGV[4] or do not cover the
        operations, or an unknown operation
]]
--- @include "_branch.lua"

local gid = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'gid') ~= gid then return { -5, 0, '' } end
  return { 2, 0, '' }
end

local locks = declared_locks()
if not covers(ARGV[4], locks) then return { -6, 0, '' } end
local ops = cjson.decode(ARGV[3])
local missing = undeclared(ops, locks)
if missing > 0 then return { -6, missing, '' } end

local holders = {}
local states = {}
for i, op in ipairs(ops) do
  local holder = holders[op.key]
  if holder == nil then
    holder = redis.call('GET', locks[op.key]) or ''
    holders[op.key] = holder
  end
  if holder ~= '' and holder ~= gid then return { -1, i, holder } end
  local code = simulate(states, op, true)
  if code ~= 0 then return { code, i, '' } end
end

if ARGV[2] ~= 'stage' then return { 3, 0, '' } end

redis.call('HSET', KEYS[1], 'gid', gid, 'created', ARGV[5], 'ops', ARGV[3], 'keys', ARGV[4], 'v', '1')
for i = 3, #KEYS, 2 do redis.call('SET', KEYS[i], gid) end
return { 1, 0, '' }
