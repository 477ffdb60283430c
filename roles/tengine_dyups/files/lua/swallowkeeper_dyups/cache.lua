-- swallowkeeper_dyups.cache: each worker's own copy of the upstreams, ready for the balancer.
--
-- sync() compares the shared version with the worker's (a load from the version page, see
-- state.lua) and, when it moved,
-- rebuilds the upstreams the journal names (all of them when the journal does not reach back far
-- enough). Nothing is decoded on a request unless something changed; the per-peer balancing state
-- (weights, failures, connection counts) lives here and is per worker, like nginx's own round
-- robin without a `zone`. A replaced upstream starts with fresh peer state, as in Tengine.

local state = require("swallowkeeper_dyups.state")
local upstream = require("swallowkeeper_dyups.upstream")
local rules = require("swallowkeeper_dyups.rules")

local ngx = ngx
local lower, find, pairs, ngx_now = string.lower, string.find, pairs, ngx.now

local _M = {}

local by_key = {}    -- lower-case name -> upstream
local by_name = {}   -- names as requests spell them -> upstream (emptied on every change)
local version = -1
local dict, cell
local checked_dict_at = 0

-- An address as ngx.balancer.set_current_peer takes it: IPv6 in brackets (a bare "::1" is read
-- as host ":" with port ":1", "invalid port").
local function peer_host(ip)
    if find(ip, ":", 1, true) then
        return "[" .. ip .. "]"
    end
    return ip
end

-- The balancer's view of a record: peers (one per resolved address, as nginx makes them).
local function build(record)
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
    end
    ups.tries = #ups.primary + #ups.backup
    ups.single = #ups.primary == 1 and #ups.backup == 0
    return ups
end

local function load(key, encoded)
    if not encoded then
        by_key[key] = nil
        return
    end
    local record, err = upstream.decode(encoded)
    if not record then
        ngx.log(ngx.ERR, "dyups: ", err)
        by_key[key] = nil
        return
    end
    by_key[key] = build(record)
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
                load(key, state.get(key))
            end
        end
    else
        by_key = {}
        local count = 0
        for key, encoded in pairs(state.all()) do
            load(key, encoded)
            count = count + 1
        end
        ngx.log(ngx.INFO, "dyups: rebuilt every upstream (", count, ") at version ", current, ", was ", version)
    end
    by_name = {}
    version = current
end

-- The upstream a request names (case-insensitive, like nginx), or nil. Call sync() first.
function _M.lookup(name)
    local ups = by_name[name]
    if ups then
        return ups
    end
    ups = by_key[lower(name)]
    if ups then
        by_name[name] = ups
    end
    return ups
end

-- { key = upstream } of every upstream this worker holds (after sync()).
function _M.all()
    return by_key
end

function _M.version()
    return version
end

return _M
