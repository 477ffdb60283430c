-- swallowkeeper_dyups.cache: each worker's own copy of the upstreams, ready for the balancer.
--
-- sync() compares the shared version with the worker's (a load from the version page, see
-- state.lua) and, when it moved,
-- rebuilds the upstreams the journal names (all of them when the journal does not reach back far
-- enough). Nothing is decoded on a request unless something changed; the per-peer balancing state
-- (weights, failures, connection counts) lives here and is per worker, like nginx's own round
-- robin without a `zone`. A replaced upstream starts with fresh peer state, as in Tengine.
--
-- A changed upstream whose stored text is longer than BIG bytes (some 1 000 servers) is rebuilt in
-- the background: a timer decodes and builds it in steps of about SLICE seconds (pause below),
-- while the worker goes on serving every other upstream, and this one
-- as it had it (a new one: not yet); the new copy replaces it when complete, unless a later change
-- came meanwhile. Built inline on a request, a 10 000-server upstream held each worker 300-500 ms
-- (issue 25). After a full rebuild (a worker's first request, a journal that does not reach back)
-- each upstream is built on its first use (lookup), inline, and all of them only when the interface
-- lists them (all): a worker's first request builds the one upstream it names, not every one
-- (10 000 servers took a new worker's first request 57 ms).

local state = require("swallowkeeper_dyups.state")
local upstream = require("swallowkeeper_dyups.upstream")
local rules = require("swallowkeeper_dyups.rules")

local ngx = ngx
local lower, find, pairs, next, ngx_now = string.lower, string.find, pairs, next, ngx.now
local PAUSE_EVERY = rules.PAUSE_EVERY
local BIG = 32768

local _M = {}

local by_key = {}    -- lower-case name -> upstream
local by_name = {}   -- names as requests spell them -> upstream (emptied on every change)
local version = -1
local dict, cell
local checked_dict_at = 0
local stamp = {}     -- key -> changes this worker saw to it: a background copy older than the last is dropped
local epoch = 0      -- full rebuilds: a background copy begun before one is dropped
local queued = {}    -- key -> its stamp when queued for the background
local running = false
local lazy = false   -- after a full rebuild: an upstream not in by_key is built on its first lookup
local damaged = {}   -- key -> true: its stored text did not decode (logged once, not at every lookup)

-- Called every rules.PAUSE_EVERY items of a long job (a big POST's parse, a background build):
-- once the job has run SLICE seconds since it last let nginx in, it sleeps a millisecond, so the
-- worker's other requests wait at most about SLICE. ngx.sleep(0) is no pause on stock nginx: the
-- job resumes in the same round of posted events, before nginx looks at any connection.
local SLICE = 0.005
local let_in_at = 0

local function pause()
    ngx.update_time()
    if ngx_now() - let_in_at >= SLICE then
        ngx.sleep(0.001)
        ngx.update_time()
        let_in_at = ngx_now()
    end
end

_M.pause = pause

-- An address as ngx.balancer.set_current_peer takes it: IPv6 in brackets (a bare "::1" is read
-- as host ":" with port ":1", "invalid port").
local function peer_host(ip)
    if find(ip, ":", 1, true) then
        return "[" .. ip .. "]"
    end
    return ip
end

-- The balancer's view of a record: peers (one per resolved address, as nginx makes them).
-- `pause` (optional): called every PAUSE_EVERY servers.
local function build(record, pause_fn)
    local ups = { name = record.name, record = record, primary = {}, backup = {} }
    for i = 1, #record.servers do
        local s = record.servers[i]
        local list = s.backup and ups.backup or ups.primary
        for j = 1, #s.ips do
            list[#list + 1] = {
                host = peer_host(s.ips[j]), port = s.port, name = rules.server_address(s.ips[j], s.port),
                weight = s.weight, effective = s.weight, current = 0,
                max_fails = s.max_fails, fail_timeout = s.fail_timeout, max_conns = s.max_conns,
                down = s.down, fails = 0, checked = 0, accessed = 0, conns = 0,
            }
        end
        if pause_fn and i % PAUSE_EVERY == 0 then
            pause_fn()
        end
    end
    ups.tries = #ups.primary + #ups.backup
    ups.single = #ups.primary == 1 and #ups.backup == 0
    return ups
end

-- The balancer's view of an encoded upstream, or nil (damaged: logged).
local function built(encoded, pause_fn)
    local record, err = upstream.decode(encoded, pause_fn)
    if not record then
        ngx.log(ngx.ERR, "dyups: ", err)
        return nil
    end
    return build(record, pause_fn)
end

local function load(key, encoded)
    stamp[key] = (stamp[key] or 0) + 1
    damaged[key] = nil
    by_key[key] = encoded and built(encoded) or nil
end

-- After a full rebuild: the upstream stored under key, built now (nil when there is none).
-- `pause_fn` (optional, content phase only) lets other requests in: a change or a full rebuild that
-- came meanwhile wins over this build.
local function build_late(key, pause_fn)
    if damaged[key] then
        return nil
    end
    local encoded = state.get(key)
    if not encoded then
        return nil
    end
    local began, mark = epoch, stamp[key]
    local ups = built(encoded, pause_fn)
    if epoch ~= began or stamp[key] ~= mark then
        return by_key[key]
    end
    by_key[key] = ups
    damaged[key] = ups == nil or nil
    return ups
end

-- The timer that builds the queued upstreams (see the top of this file).
local function build_all_queued()
    let_in_at = ngx_now()
    local key, mark = next(queued)
    while key do
        queued[key] = nil
        local began = epoch
        local encoded = state.get(key)
        local ups = encoded and built(encoded, pause) or nil
        if stamp[key] == mark and epoch == began then
            by_key[key] = ups
            by_name = {}
        end
        key, mark = next(queued)
    end
end

local function build_queued(premature)
    if not premature then
        local ok, err = pcall(build_all_queued)
        if not ok then
            ngx.log(ngx.ERR, "dyups: building upstreams in the background failed: ", err)
        end
    end
    running = false
end

-- A changed upstream: built now, or queued for the background when it is big.
local function changed(key)
    local encoded = state.get(key)
    if not encoded or #encoded <= BIG then
        queued[key] = nil
        return load(key, encoded)
    end
    stamp[key] = (stamp[key] or 0) + 1
    queued[key] = stamp[key]
    if not running then
        local ok, err = ngx.timer.at(0, build_queued)
        if not ok then
            -- no timer (the worker is exiting, or too many timers): build it here
            ngx.log(ngx.WARN, "dyups: upstream ", key, " built inline: ", err)
            queued[key] = nil
            return load(key, encoded)
        end
        running = true
    end
end

function _M.sync()
    local current
    if cell then
        current = cell[0]
        if current <= version then
            -- the shared page is new at every reload: a change that an old worker made after
            -- the master mapped it reaches the page only with the next one; the dict is read
            -- once a second to catch that. A page behind this worker (it learnt a version from
            -- the dict) is no change: it must not make the worker rebuild everything
            local now = ngx_now()
            if now - checked_dict_at < 1 then
                return
            end
            checked_dict_at = now
            current = dict:get("v") or 0
            if current == version then
                return
            end
        end
    else
        if not dict then
            dict = state.dict()
            cell = state.version_cell()
            if cell then
                return _M.sync()
            end
        end
        current = dict:get("v") or 0
        if current == version then
            return
        end
    end
    local keys = version >= 0 and current > version and state.changes(version, current)
    if keys then
        local done = {}
        for i = 1, #keys do
            local key = keys[i]
            if not done[key] then
                done[key] = true
                changed(key)
            end
        end
    else
        by_key = {}
        epoch = epoch + 1
        queued = {}
        damaged = {}
        lazy = true
        ngx.log(ngx.INFO, "dyups: every upstream is built on its first use, from version ", current, ", was ", version)
    end
    by_name = {}
    version = current
end

-- sync(), then wait until the background has built what it queued (at most `timeout` seconds,
-- default 10): the interface's GETs show what the worker serves, never a copy about to be replaced.
-- Only where ngx.sleep may run (the content phase).
function _M.sync_and_wait(timeout)
    _M.sync()
    local deadline = ngx_now() + (timeout or 10)
    while (running or next(queued)) and ngx_now() < deadline do
        ngx.sleep(0.002)
        ngx.update_time()
    end
end

-- The upstream a request names (case-insensitive, like nginx), or nil. Call sync() first.
function _M.lookup(name)
    local ups = by_name[name]
    if ups then
        return ups
    end
    local key = lower(name)
    ups = by_key[key]
    if ups == nil and lazy then
        ups = build_late(key)
    end
    if ups then
        by_name[name] = ups
    end
    return ups
end

-- { key = upstream } of every upstream this worker holds (after sync()); builds those not built yet,
-- letting other requests in meanwhile (pause). Only where ngx.sleep may run (the content phase).
function _M.all()
    if lazy then
        let_in_at = ngx_now()
        local began, count = epoch, 0
        for key in pairs(state.all()) do
            if epoch ~= began then
                break
            end
            if by_key[key] == nil then
                build_late(key, pause)
                count = count + 1
                if count % PAUSE_EVERY == 0 then
                    pause()
                end
            end
        end
        lazy = epoch ~= began
    end
    return by_key
end

function _M.version()
    return version
end

return _M
