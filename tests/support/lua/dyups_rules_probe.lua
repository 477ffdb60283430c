-- Test-only: runs inputs through swallowkeeper_dyups.rules for tests/integration/test_lua_rules.py.
--
-- POST body: one case a line, "KIND<TAB>HEX(input)", KIND one of name, server, directive, body.
-- Answer: one line per case, fields hex-encoded and tab-separated; a refusal is "err", rule id, message:
--   name       ok, name key | err, rule, message
--   server     ok, spec, detail line | err, rule, message
--   directive  ok, normalized text | err, rule, message
--   body       ok, sorted server specs joined by "\n", directive texts joined by "\n" | err, rule, message
--              (the upstream is named "x")

local rules = require("swallowkeeper_dyups.rules")

local _M = {}

local function unhex(s)
    return (s:gsub("%x%x", function(pair) return string.char(tonumber(pair, 16)) end))
end

local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Python's Server.sort_key order (backup, kind, host, port): the order of the canonical output. A
-- canonical host of digits and dots is an IPv4 address (a host name's last label is never all digits).
local function sort_servers(servers)
    local function kind(host)
        return host:find(":", 1, true) and "ipv6" or host:find("^[0-9.]+$") and "ipv4" or "hostname"
    end
    table.sort(servers, function(a, b)
        if a.backup ~= b.backup then
            return not a.backup
        end
        local ka, kb = kind(a.host), kind(b.host)
        if ka ~= kb then
            return ka < kb
        end
        if a.host ~= b.host then
            return a.host < b.host
        end
        return a.port < b.port
    end)
    return servers
end

local function run(kind, input)
    local result, err, rule
    if kind == "name" then
        result, err, rule = rules.validate_name(input)
        return result and { "ok", rules.name_key(result) } or { "err", rule, err }
    elseif kind == "server" then
        result, err, rule = rules.parse_server(input)
        return result and { "ok", rules.server_spec(result), rules.detail_line(result) } or { "err", rule, err }
    elseif kind == "directive" then
        result, err, rule = rules.parse_directive(input)
        return result and { "ok", result.text } or { "err", rule, err }
    elseif kind == "body" then
        result, err, rule = rules.parse_body("x", input)
        if not result then
            return { "err", rule, err }
        end
        local specs, texts = {}, {}
        for _, server in ipairs(sort_servers(result.servers)) do
            specs[#specs + 1] = rules.server_spec(server)
        end
        for _, directive in ipairs(result.directives) do
            texts[#texts + 1] = directive.text
        end
        return { "ok", table.concat(specs, "\n"), table.concat(texts, "\n") }
    end
    return { "crash", "unknown kind " .. kind }
end

function _M.handle()
    ngx.req.read_body()
    local body = ngx.req.get_body_data() or ""
    local out = {}
    for line in body:gmatch("[^\n]+") do
        local kind, input = line:match("^(%a+)\t(%x*)$")
        local ok, result = pcall(run, kind, unhex(input or ""))
        if not ok then
            result = { "crash", tostring(result) }
        end
        for i = 1, #result do
            result[i] = hex(tostring(result[i]))
        end
        out[#out + 1] = table.concat(result, "\t")
    end
    ngx.header["Content-Type"] = "text/plain"
    ngx.print(table.concat(out, "\n"), "\n")
end

return _M
