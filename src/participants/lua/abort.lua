--[[
  Aborts a staged redis branch: releases the locks this gid holds and drops the staged
  record without applying anything. Idempotent: no record means nothing to undo.

  Input:
    KEYS[1]              the staged record, tcx:{T}:staged:<gid>
    KEYS[2i], KEYS[2i+1] each data key of the record and its lock key (i = 1..n)
    ARGV[1]  gid
    ARGV[2]  the record's `keys` field exactly as the caller read it (to build KEYS)

  Output: {code, op, detail}
     1  unlocked, record deleted
     0  no staged record: nothing to abort
    -5  the staged record belongs to another gid
    -6  ARGV[2] differs from the record's keys, or KEYS do not cover them: re-read, retry
]]
--- @include "_branch.lua"

local gid = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return { 0, 0, '' } end
local record = redis.call('HMGET', KEYS[1], 'gid', 'keys')
if record[1] ~= gid then return { -5, 0, '' } end
if record[2] ~= ARGV[2] or not covers(record[2], declared_locks()) then return { -6, 0, '' } end
release_locks(gid)
redis.call('DEL', KEYS[1])
return { 1, 0, '' }
