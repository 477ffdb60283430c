-- swallowkeeper_dyups.api: Tengine's dyups REST interface, for content_by_lua on the management server.
--
--     server {
--         listen 127.0.0.1:18882;
--         location / { content_by_lua_block { require("swallowkeeper_dyups.api").handle() } }
--     }
--
-- Answers as Tengine 3.2's ngx_http_dyups_module does (see the wire contract), except that a body or
-- name this flavor refuses gets 400 saying what is wrong and the rule id (rules.lua; Tengine: 500
-- "add server failed"):
--
--   GET /list                 200 names, one a line; 204 when there is none
--   GET /detail               200 name, /detail server lines, blank line; 204 when there is none
--   GET /upstream/NAME        200 "server ADDR" lines; 404 empty body when unknown
--   POST /upstream/NAME       200 "success"; 400 reason; 409 when another writer holds the lock
--   DELETE /upstream/NAME     200 "success"; 404 when unknown
--   /upstream/a/b, /upstream  404 (GET, POST) or 405 (DELETE) "not support this interface"
--   other paths               404 (GET: empty body; POST: "not support this api"), 405 on DELETE
--   other methods             405, empty body
--
-- Every answer carries X-Dyups-Free-Space: the shared dict's free memory in bytes (free_space(): whole
-- free pages), which the watcher exports as a metric.
--
-- The first path segment compares case-insensitively (Tengine: ngx_strncasecmp); so do names.

local cache = require("swallowkeeper_dyups.cache")
local rules = require("swallowkeeper_dyups.rules")
local state = require("swallowkeeper_dyups.state")
local upstream = require("swallowkeeper_dyups.upstream")

local ngx = ngx
local concat, sort, lower, sub, find, format = table.concat, table.sort, string.lower, string.sub, string.find,
    string.format

local _M = {}

local function respond(status, body)
    ngx.status = status
    local dict = state.dict()
    local ok, free = pcall(dict.free_space, dict)   -- lua-nginx-module 0.10.11 and later
    if ok and free then
        ngx.header["X-Dyups-Free-Space"] = free
    end
    if status ~= 204 then   -- a 204 has neither (RFC 9110)
        ngx.header["Content-Type"] = "text/plain"
        ngx.header["Content-Length"] = #body
    end
    ngx.send_headers()
    if body ~= "" then
        ngx.print(body)
    end
    return ngx.exit(ngx.HTTP_OK)
end

-- Tengine's ngx_dyups_parse_path: segments after the leading "/", split on "/" (a trailing "/"
-- adds nothing, "//" adds an empty segment).
local function segments(uri)
    local out, i, n = {}, 2, #uri
    while i <= n do
        local slash = find(uri, "/", i, true)
        if slash then
            out[#out + 1] = sub(uri, i, slash - 1)
            i = slash + 1
        else
            out[#out + 1] = sub(uri, i)
            break
        end
    end
    return out
end

local function sorted_upstreams()
    cache.sync_and_wait()
    local list = {}
    for _, ups in pairs(cache.all()) do
        list[#list + 1] = ups
    end
    sort(list, function(a, b) return a.name < b.name end)
    return list
end

local function show_list()
    local lines = {}
    for _, ups in ipairs(sorted_upstreams()) do
        lines[#lines + 1] = ups.name .. "\n"
    end
    return concat(lines)
end

local function show_detail()
    local lines = {}
    for _, ups in ipairs(sorted_upstreams()) do
        lines[#lines + 1] = ups.name .. "\n"
        for _, server in ipairs(ups.record.servers) do
            lines[#lines + 1] = rules.detail_line(server, upstream.shown_address(server)) .. "\n"
        end
        lines[#lines + 1] = "\n"
    end
    return concat(lines)
end

local function show_upstream(ups)
    local lines = {}
    for _, server in ipairs(ups.record.servers) do
        lines[#lines + 1] = "server " .. upstream.shown_address(server) .. "\n"
    end
    return concat(lines)
end

local function do_get(parts)
    ngx.req.discard_body()
    local first = parts[1] and lower(parts[1])
    local body
    if first == "list" then
        body = show_list()
    elseif first == "detail" then
        body = show_detail()
    elseif first == "upstream" then
        if #parts ~= 2 then
            return respond(404, "not support this interface")
        end
        cache.sync_and_wait()
        local ups = cache.lookup(parts[2])
        if not ups then
            return respond(404, "")
        end
        body = show_upstream(ups)
    else
        return respond(404, "")
    end
    if body == "" then
        return respond(204, "")
    end
    return respond(200, body)
end

-- The answer to a write the state module could not do: 409 when another writer held the lock.
local function write_failed(what, name, err)
    if err == "busy" then
        return respond(409, "wait and try again\n")
    end
    ngx.log(ngx.ERR, "dyups: ", what, " upstream \"", name, "\" failed: ", err)
    return respond(500, what .. " failed: " .. tostring(err) .. "\n")
end

-- The NAME of /upstream/NAME, or nil after answering `status` (Tengine: 404 on POST, 405 on DELETE).
local function upstream_name(parts, status)
    if #parts ~= 2 then
        respond(status, "not support this interface")
        return nil
    end
    if lower(parts[1]) ~= "upstream" then
        respond(status, "not support this api")
        return nil
    end
    return parts[2]
end

local function do_delete(parts)
    ngx.req.discard_body()
    local name = upstream_name(parts, 405)
    if not name then
        return
    end
    local version, err = state.delete(name)
    if version == false then
        return respond(404, "not found upstream")
    end
    if not version then
        return write_failed("delete", name, err)
    end
    ngx.log(ngx.NOTICE, "dyups: deleted upstream \"", name, "\" (version ", version, ")")
    return respond(200, "success")
end

local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body then
        return body
    end
    local path = ngx.req.get_body_file()
    if not path then
        return ""
    end
    local handle, err = io.open(path, "rb")
    if not handle then
        return nil, err
    end
    body = handle:read("*a")
    handle:close()
    return body
end

-- Let nginx serve other requests between the steps of a long parse (rules.lua, PAUSE_EVERY;
-- cache.pause): a 10 000-server body held this worker for about a second otherwise (issue 25).
local yield = cache.pause

local function do_post(parts)
    local body, err = read_body()
    if not body then
        return respond(500, "the request body could not be read: " .. tostring(err) .. "\n")
    end
    local name = upstream_name(parts, 404)
    if not name then
        return
    end
    if not find(body, "%S") then
        return respond(400, "the request body is empty (rule body.empty): send the upstream's server lines "
                            .. "and directives, like 'server 10.0.0.1:8080 weight=2;'\n")
    end
    local record, rule
    record, err, rule = upstream.from_body(name, body, yield)
    if not record then
        local what = sub(rule, 1, 5) == "name." and "the upstream name in the URL" or "the request body"
        err = format("%s is refused (rule %s): %s", what, rule, err)
        ngx.log(ngx.WARN, "dyups: POST /upstream/", name, " refused: ", err)
        return respond(400, err .. "\n")
    end
    local version
    version, err = state.put(record, yield)
    if not version then
        return write_failed("update", name, err)
    end
    ngx.log(ngx.NOTICE, "dyups: updated upstream \"", name, "\" with ", #record.servers, " servers (version ",
            version, ")")
    return respond(200, "success")
end

function _M.handle()
    local method = ngx.req.get_method()
    local parts = segments(ngx.var.uri)
    if method == "GET" then
        return do_get(parts)
    elseif method == "DELETE" then
        return do_delete(parts)
    elseif method == "POST" then
        return do_post(parts)
    end
    ngx.req.discard_body()
    return respond(405, "")
end

return _M
