-- Test-only: runs inputs through swallowkeeper_dyups.rules for tests/integration/test_lua_rules.py.
--
-- POST body: one case a line, "KIND<TAB>HEX(input)", KIND one of name, server, directive, body.
-- Answer: one line per case, fields hex-encoded and tab-separated:
--   name       ok | err, message
--   server     ok, spec, detail line | err, message
--   directive  ok, normalized text | err, message
--   body       ok, sorted server specs joined by "\n", directive texts joined by "\n" | err, message
--              (the upstream is named "x")

local rules = require("swallowkeeper_dyups.rules")

local _M = {}

local function unhex(s)
    return (s:gsub("%x%x", function(pair) return string.char(tonumber(pair, 16)) end))
end

local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function run(kind, input)
    if kind == "name" then
        local problem = rules.name_problem(input)
        if problem then
            return { "err", problem }
        end
        return { "ok" }
    elseif kind == "server" then
        local server, err = rules.parse_server(input)
        if not server then
            return { "err", err }
        end
        return { "ok", rules.server_spec(server), rules.detail_line(server) }
    elseif kind == "directive" then
        local directive, err = rules.parse_directive(input)
        if not directive then
            return { "err", err }
        end
        return { "ok", directive.text }
    elseif kind == "body" then
        local ups, err = rules.parse_body("x", input)
        if not ups then
            return { "err", err }
        end
        local specs, texts = {}, {}
        for _, server in ipairs(rules.sort_servers(ups.servers)) do
            specs[#specs + 1] = rules.server_spec(server)
        end
        for _, directive in ipairs(ups.directives) do
            texts[#texts + 1] = directive.text
        end
        return { "ok", table.concat(specs, "\n"), table.concat(texts, "\n") }
    end
    return { "err", "unknown kind " .. kind }
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
            result[i] = hex(result[i])
        end
        out[#out + 1] = table.concat(result, "\t")
    end
    ngx.header["Content-Type"] = "text/plain"
    ngx.print(table.concat(out, "\n"), "\n")
end

return _M
