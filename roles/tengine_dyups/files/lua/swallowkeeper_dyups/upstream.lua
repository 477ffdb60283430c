-- swallowkeeper_dyups.upstream: one upstream as the Lua flavor stores it.
--
-- build(): the rules (rules.lua, the Python ones), then this flavor's policy (which
-- upstream directives the Lua balancer can honour), then host name resolution. The result, a
-- record, is what the shared dict holds (encode / decode: a few text lines, no JSON).
--
-- record = {
--   name = "WebappReadonly",                       -- as given (names compare case-insensitively)
--   servers = { {                                  -- in the order given, like Tengine
--       host = "app1.internal", port = 8080,       -- canonical, as written
--       ips = { "10.0.0.1", ... },                 -- resolved at build time; IP literals as is
--       weight, max_fails, fail_timeout, max_conns, backup, down } },
--   directives = { "keepalive 32" },               -- accepted directives, normalized text
-- }

local rules = require("swallowkeeper_dyups.rules")
local resolve = require("swallowkeeper_dyups.resolve")

local concat, format, sub, gmatch, match, find = table.concat, string.format, string.sub, string.gmatch,
    string.match, string.find
local tonumber = tonumber

local _M = {}

-- Upstream directives the balancer honours. The values are stored and kept; the connection pool
-- itself is the `keepalive` of the dyups_balancer upstream in nginx.conf (see docs/lua-flavor.md).
local SUPPORTED = { keepalive = true, keepalive_timeout = true, keepalive_requests = true }

local REFUSED = {
    ip_hash = "the Lua flavor balances with smooth weighted round robin only; ip_hash is not implemented",
    hash = "the Lua flavor balances with smooth weighted round robin only; hash is not implemented",
    least_conn = "the Lua flavor balances with smooth weighted round robin only; least_conn is not implemented",
    check = "active health checks belong to Tengine's upstream check module, which stock nginx does not have; "
            .. "the Lua flavor checks passively (max_fails / fail_timeout)",
}
REFUSED.check_http_send = REFUSED.check
REFUSED.check_http_expect_alive = REFUSED.check
REFUSED.check_keepalive_requests = REFUSED.check

_M.SUPPORTED = SUPPORTED

-- The key upstreams are stored and looked up under: the name rule's (rules.name_key).
_M.key = rules.name_key

-- A record from validated parts (rules.build_upstream's result); nil, reason, rule id when the
-- flavor cannot honour a directive (flavor.directive_unsupported) or a host does not resolve
-- (server.unresolvable). `pause` (optional): called every rules.PAUSE_EVERY servers (rules.lua).
function _M.from_parsed(parsed, pause)
    local directives = {}
    for i = 1, #parsed.directives do
        local directive = parsed.directives[i]
        if not SUPPORTED[directive.name] then
            local why = REFUSED[directive.name] or "the Lua flavor does not implement it"
            return nil, format("upstream directive %s is valid nginx but not supported here: %s "
                               .. "(supported: keepalive, keepalive_timeout, keepalive_requests)",
                               rules.quote(directive.text), why), "flavor.directive_unsupported"
        end
        directives[#directives + 1] = directive.text
    end
    local servers = {}
    for i = 1, #parsed.servers do
        local server = parsed.servers[i]
        local ips, err = resolve.resolve(server.host)
        if not ips then
            return nil, format("server %s: %s", rules.quote(rules.server_spec(server)), err), "server.unresolvable"
        end
        servers[i] = {
            host = server.host, port = server.port, ips = ips, weight = server.weight,
            max_fails = server.max_fails, fail_timeout = server.fail_timeout, max_conns = server.max_conns,
            backup = server.backup, down = server.down,
        }
        if pause and i % rules.PAUSE_EVERY == 0 then
            pause()
        end
    end
    return { name = parsed.name, servers = servers, directives = directives }
end

-- A record from a POST body; nil, reason, rule id otherwise. `pause`: as in rules.parse_body.
function _M.from_body(name, body, pause)
    local parsed, err, rule = rules.parse_body(name, body, pause)
    if not parsed then
        return nil, err, rule
    end
    return _M.from_parsed(parsed, pause)
end

-- "ADDR" as Tengine shows a server in /detail and /upstream/NAME: its first resolved address.
function _M.shown_address(server)
    return rules.server_address(server.ips[1], server.port)
end

-- One line per server and directive; fields separated by single spaces (no field holds one,
-- except a directive's text, which is the rest of its line). `pause` (optional): called every
-- rules.PAUSE_EVERY servers, here and in decode.
function _M.encode(record, pause)
    local lines = { "N " .. record.name }
    for i = 1, #record.servers do
        local s = record.servers[i]
        lines[#lines + 1] = format("S %d %d %d %d %d %d %d %s %s", s.port, s.weight, s.max_conns, s.max_fails,
                                   s.fail_timeout, s.backup and 1 or 0, s.down and 1 or 0, s.host,
                                   concat(s.ips, " "))
        if pause and i % rules.PAUSE_EVERY == 0 then
            pause()
        end
    end
    for i = 1, #record.directives do
        lines[#lines + 1] = "D " .. record.directives[i]
    end
    return concat(lines, "\n")
end

-- The fields of a server line after "S ": port weight max_conns max_fails fail_timeout backup down
-- host, then the addresses.
local SERVER_LINE = "^(%d+) (%d+) (%d+) (%d+) (%d+) ([01]) ([01]) (%S+) ?(.*)$"

function _M.decode(text, pause)
    local record = { servers = {}, directives = {} }
    local servers = record.servers
    for line in gmatch(text, "[^\n]+") do
        local kind, rest = sub(line, 1, 1), sub(line, 3)
        if kind == "N" then
            record.name = rest
        elseif kind == "S" then
            local port, weight, max_conns, max_fails, fail_timeout, backup, down, host, addresses = match(rest, SERVER_LINE)
            if not port then
                return nil, "a stored upstream is damaged: " .. line
            end
            local ips
            if addresses == "" or find(addresses, " ", 1, true) then
                ips = {}
                for ip in gmatch(addresses, "%S+") do
                    ips[#ips + 1] = ip
                end
            else
                ips = { addresses }
            end
            servers[#servers + 1] = {
                port = tonumber(port), weight = tonumber(weight), max_conns = tonumber(max_conns),
                max_fails = tonumber(max_fails), fail_timeout = tonumber(fail_timeout), backup = backup == "1",
                down = down == "1", host = host, ips = ips,
            }
            if pause and #servers % rules.PAUSE_EVERY == 0 then
                pause()
            end
        elseif kind == "D" then
            record.directives[#record.directives + 1] = rest
        end
    end
    if not record.name or #record.servers == 0 then
        return nil, "a stored upstream is damaged: " .. text
    end
    return record
end

-- The records of an upstream file's text (the format _upstream_file.render writes). A file that
-- breaks the rules raises nothing but returns nil, reason (with the line); upstreams the flavor
-- cannot take (unsupported directive, unresolvable host) come back in `skipped` as {name, reason}.
function _M.parse_file(text)
    local tokens, err = rules.tokens(text)
    if not tokens then
        return nil, err
    end
    local records, skipped, seen, seen_key = {}, {}, {}, {}
    local i = 1
    while i <= #tokens do
        local line, word = tokens[i][1], tokens[i][2]
        local name = tokens[i + 1] and tokens[i + 1][2]
        if word ~= "upstream" or not tokens[i + 2] or tokens[i + 2][2] ~= "{" then
            return nil, format("line %d: expected 'upstream NAME {', found %s", line, rules.quote(word))
        end
        local servers, directives, stop = rules.block_statements(tokens, i + 3)
        if not servers then
            return nil, directives
        end
        if stop > #tokens then
            return nil, format("line %d: upstream %s is not closed with '}'", line, name)
        end
        if seen[name] then
            return nil, format("line %d: upstream %s is defined twice", line, name)
        end
        local parsed, rule
        parsed, err, rule = rules.build_upstream(name, servers, directives)
        if not parsed then
            return nil, format("line %d: %s (rule %s)", line, err, rule)
        end
        local record
        record, err = _M.from_parsed(parsed)
        if seen_key[_M.key(name)] then
            record, err = nil, format("upstream %s differs from upstream %s only in letter case, and nginx "
                                      .. "compares upstream names case-insensitively", name, seen_key[_M.key(name)])
        end
        seen[name] = true
        seen_key[_M.key(name)] = seen_key[_M.key(name)] or name
        if record then
            records[#records + 1] = record
        else
            skipped[#skipped + 1] = { name, err }
        end
        i = stop + 1
    end
    return records, skipped
end

return _M
