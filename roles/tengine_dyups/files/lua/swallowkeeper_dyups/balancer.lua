-- swallowkeeper_dyups.balancer: balancer_by_lua for the `dyups_balancer` upstream.
--
--     upstream dyups_balancer {
--         server 0.0.0.1:1 down;    # placeholder; "no live upstreams" (502) when Lua sets no peer
--         balancer_by_lua_block { require("swallowkeeper_dyups.balancer").balance() }
--         keepalive 64;             # after balancer_by_lua: idle connections kept per worker
--     }
--     log_by_lua_block { require("swallowkeeper_dyups.balancer").log() }   # http level
--
--     location / { set $dyups_upstream WebappReadonly_b; proxy_pass http://dyups_balancer; }
--
-- The upstream is the one $dyups_upstream names, looked up on every request in the worker's copy
-- (cache.lua), which follows every change on the worker's next request.
--
-- Peer selection is nginx's round robin (ngx_http_upstream_round_robin.c), per worker:
--   * smooth weighted round robin over the primary peers that are not down, not tried yet by this
--     request, not failed (fails >= max_fails within fail_timeout) and below max_conns;
--   * the backup peers only when no primary peer can be chosen;
--   * nothing left: every peer's failure count is reset (nginx: "quick recovery") and the request
--     gets 502 with "no live upstreams" in the error log;
--   * one primary peer and no backup: it is used whenever it is not down (max_fails ignored), also
--     again on a retry (a kept-alive connection the server had closed: nginx adds a try for it).
-- Retries: set_more_tries(peers) on the first try, so proxy_next_upstream (and
-- proxy_next_upstream_tries) decides as with a static upstream; each try picks an untried peer.
-- Passive health: a try that fails (error, timeout, invalid header, or an http_* condition listed
-- in proxy_next_upstream, as nginx's get_last_failure reports it) counts against its peer; the
-- last try's outcome is read in the log phase (log()), where a success also clears the peer's
-- failures once fail_timeout has passed, as nginx does. Per-request state is keyed by the
-- request, not kept in ngx.ctx, so an internal redirect (error_page) loses nothing.

local ffi = require("ffi")
local ngx_balancer = require("ngx.balancer")
local get_request = require("resty.core.base").get_request
local cache = require("swallowkeeper_dyups.cache")

local ngx = ngx
local var = ngx.var
local set_current_peer = ngx_balancer.set_current_peer
local set_more_tries = ngx_balancer.set_more_tries
local get_last_failure = ngx_balancer.get_last_failure
local ngx_time, byte, floor, setmetatable, tonumber = ngx.time, string.byte, math.floor, setmetatable, tonumber
local cast = ffi.cast
local log, ERR, WARN = ngx.log, ngx.ERR, ngx.WARN

local _M = {}

-- What a request's tries need to remember, keyed by the request: the address of its
-- ngx_http_request_t (a number) for a main request (the same across internal redirects; removed
-- in the log phase, which nginx always runs for a main request), its ngx.ctx table for a
-- subrequest (which has no log phase: the weak keys let those go with the subrequest). No table
-- is made per request.
local weak = { __mode = "k" }
local req_ups = setmetatable({}, weak)       -- the upstream of the request's first try
local req_peer = setmetatable({}, weak)      -- the peer of its current try
local req_tried = setmetatable({}, weak)     -- {peer = true} of earlier tries (made on a retry)
local req_backup = setmetatable({}, weak)    -- true once it moved to the backup servers

local function main_request_key()
    return tonumber(cast("uintptr_t", get_request()))
end

local function request_key()
    if ngx.is_subrequest then
        return ngx.ctx
    end
    return main_request_key()
end

-- nginx's ngx_http_upstream_get_peer: smooth weighted round robin over the usable peers.
local function pick_from(peers, tried, now)
    local best, total = nil, 0
    for i = 1, #peers do
        local peer = peers[i]
        if not peer.down
            and not (tried and tried[peer])
            and not (peer.max_fails > 0 and peer.fails >= peer.max_fails and now - peer.checked <= peer.fail_timeout)
            and not (peer.max_conns > 0 and peer.conns >= peer.max_conns)
        then
            local effective = peer.effective
            peer.current = peer.current + effective
            total = total + effective
            if effective < peer.weight then
                peer.effective = effective + 1
            end
            if best == nil or peer.current > best.current then
                best = peer
            end
        end
    end
    if best then
        best.current = best.current - total
        if now - best.checked > best.fail_timeout then
            best.checked = now
        end
    end
    return best
end

local function reset_fails(peers)
    for i = 1, #peers do
        peers[i].fails = 0
    end
end

local function pick(ups, key, now)
    local tried = req_tried[key]
    if ups.single then
        -- nginx's rule for one peer: never "tried". nginx calls the balancer again only when a try
        -- may be repeated, e.g. on a kept-alive connection the server had closed (it adds a try for
        -- that): the one peer is tried again on another connection, as nginx's round robin does
        local peer = ups.primary[1]
        if peer.down or (peer.max_conns > 0 and peer.conns >= peer.max_conns) then
            return nil
        end
        return peer
    end
    local peer
    if not req_backup[key] then
        peer = pick_from(ups.primary, tried, now)
        if peer == nil and #ups.backup > 0 then
            req_backup[key] = true
        end
    end
    if peer == nil and req_backup[key] then
        peer = pick_from(ups.backup, tried, now)
    end
    if peer == nil then
        -- all peers failed: mark them live for quick recovery (nginx does the same)
        reset_fails(ups.primary)
        reset_fails(ups.backup)
    end
    return peer
end

-- nginx's ngx_http_upstream_free_round_robin_peer.
local function release(ups, peer, failed)
    if peer.conns > 0 then
        peer.conns = peer.conns - 1
    end
    if ups.single then
        return
    end
    if failed then
        local now = ngx_time()
        peer.fails = peer.fails + 1
        peer.accessed = now
        peer.checked = now
        if peer.max_fails > 0 then
            peer.effective = peer.effective - floor(peer.weight / peer.max_fails)
            if peer.fails >= peer.max_fails then
                log(WARN, "dyups: upstream server ", peer.name, " of \"", ups.name,
                    "\" temporarily disabled (", peer.fails, " failures, max_fails=", peer.max_fails, ")")
            end
        end
        if peer.effective < 0 then
            peer.effective = 0
        end
    elseif peer.accessed < peer.checked then
        peer.fails = 0
    end
end

local function forget(key)
    req_ups[key] = nil
    req_peer[key] = nil
    req_tried[key] = nil
    req_backup[key] = nil
end

function _M.balance()
    local key = request_key()
    local state = get_last_failure()     -- nil on a request's first try
    local ups
    if state == nil then
        local name = var.dyups_upstream
        cache.sync()
        ups = name and name ~= "" and cache.lookup(name)
        forget(key)
        if not ups then
            if name == nil or name == "" then
                log(ERR, "dyups: $dyups_upstream is empty: no upstream to proxy to")
            else
                log(ERR, "dyups: upstream \"", name, "\" not found")
            end
            return   -- no peer set: the placeholder server is down, nginx answers 502
        end
        req_ups[key] = ups
        -- the placeholder server is down, so nginx starts this request with 0 tries left: one
        -- try per peer (nginx's round robin allows as many), capped by proxy_next_upstream_tries
        set_more_tries(ups.tries)
    else
        ups = req_ups[key]
        if ups == nil then
            log(ERR, "dyups: a retry without a first try")
            return
        end
        local previous = req_peer[key]
        if previous then
            release(ups, previous, state == "failed")
            req_peer[key] = nil
            local tried = req_tried[key]
            if not tried then
                tried = {}
                req_tried[key] = tried
            end
            tried[previous] = true
        end
    end
    local peer = pick(ups, key, ngx_time())
    if not peer then
        log(ERR, "dyups: no live upstreams in \"", ups.name, "\"")
        return
    end
    peer.conns = peer.conns + 1
    req_peer[key] = peer
    local ok, err = set_current_peer(peer.host, peer.port)
    if not ok then
        log(ERR, "dyups: cannot use peer ", peer.name, " of \"", ups.name, "\": ", err)
    end
end

-- Log phase: the outcome of the last try. It failed when no response header came from it
-- ($upstream_header_time ends with "-": connection error, timeout, invalid header), unless the
-- client went away first (499), which nginx does not count either. A 5xx that the server sent is
-- a response, as nginx counts it when no retry is left. Read from the variables, so this holds
-- after an internal redirect (error_page) too.
function _M.log()
    local key = main_request_key()
    local peer = req_peer[key]
    if peer == nil then
        return
    end
    local ups = req_ups[key]
    forget(key)
    local header_time = var.upstream_header_time
    local failed = (header_time == nil or byte(header_time, -1) == 45) and ngx.status ~= 499
    release(ups, peer, failed)
end

return _M
