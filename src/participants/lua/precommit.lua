--[[
  3PC pre-commit of a staged redis branch: marks the staged record as pre-committed, so an
  operator (or a later recovery) can see that the coordinator's pre-commit decision reached
  this branch. The staged writes and locks are untouched; do-commit applies them.
  Idempotent: marking twice answers 1 again.

  Input:
    KEYS[1]  the staged record, tcx:{T}:staged:<gid>
    ARGV[1]  gid
    ARGV[2]  timestamp (ISO 8601) to record

  Output: {code, op, detail}
     1  marked (or already marked)
     0  no staged record: already committed or aborted, or never staged
    -5  the staged record belongs to another gid
]]
local gid = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return { 0, 0, '' } end
if redis.call('HGET', KEYS[1], 'gid') ~= gid then return { -5, 0, '' } end
if redis.call('HEXISTS', KEYS[1], 'precommitted') == 0 then
  redis.call('HSET', KEYS[1], 'precommitted', ARGV[2])
end
return { 1, 0, '' }
