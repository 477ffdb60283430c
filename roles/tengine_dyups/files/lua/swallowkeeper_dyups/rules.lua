-- swallowkeeper_dyups.rules: the upstream name, server, directive and body rules of the Lua flavor.
--
-- The same rules as the collection's Python (plugins/module_utils/_names.py, _servers.py,
-- _directives.py, _upstream.py and the block parser of _upstream_file.py), checked in the same
-- order. Both sides agree on the verdict, the rule id of a refusal (like "server.port_range", the
-- Python ValidationError.rule_id) and the canonical output of valid input (server spec, /detail line,
-- directive text); tests/vectors/*.json hold the shared cases and tests/integration/test_lua_rules.py
-- runs them and a differential run against Python. The wording of a refusal is this flavor's own.
-- Pure Lua: no ngx API, no I/O, no host name resolution (upstream.lua resolves after these rules
-- accepted a server).
--
-- Every function that can refuse returns nil, a message that names the input and what is wrong with
-- it ('server "10.0.0.1:0": the port 0 is outside 1-65535'), and the rule id.

local byte, sub, find, format, lower, gsub = string.byte, string.sub, string.find, string.format, string.lower,
    string.gsub
local concat = table.concat
local tonumber, floor = tonumber, math.floor

local _M = { _VERSION = "2" }

-- A long body is parsed in steps: the functions that walk it take an optional `pause`, called
-- after every PAUSE_EVERY statements (or 8 x as many tokens). The interface passes one that lets
-- nginx in every few milliseconds (cache.pause), so requests on the worker that parses a
-- 10 000-server POST keep being served (issue 25); without one (the upstream file at start, the
-- tests) nothing pauses.
_M.PAUSE_EVERY = 32
local PAUSE_EVERY = _M.PAUSE_EVERY

local MAX_NAME_LENGTH = 128
local DEFAULT_PORT = 80
local LIMITS = {
    weight = { 1, 10000 },
    max_fails = { 0, 10000 },
    max_conns = { 0, 1000000 },
    fail_timeout = { 0, 86400 },
}
local DEFAULTS = { weight = 1, max_fails = 1, fail_timeout = 10, max_conns = 0 }
local PARAMETERS = "weight, max_fails, fail_timeout, max_conns, backup, down"

-- A value in double quotes for a message; control, quote, backslash and non-ASCII bytes as \xNN.
local function quote(s)
    return '"' .. gsub(s, '[%c"\\\128-\255]', function(c)
        return format("\\x%02x", byte(c))
    end) .. '"'
end
_M.quote = quote

local function refuse(rule, subject, reason)
    return nil, subject .. ": " .. reason, rule
end

-- Without the ASCII whitespace at both ends that Python's str.strip() removes (non-ASCII input is
-- refused before). Linear: a pattern anchored at the end would backtrack over long runs.
local function strip(s)
    local i, j = find(s, "[^%s\28-\31]"), #s
    if not i then
        return ""
    end
    while find(s, "^[%s\28-\31]", j) do
        j = j - 1
    end
    return sub(s, i, j)
end

local function digits(s, most)
    return find(s, "^[0-9]+$") and #s <= most
end

---------------------------------------------------------------------------------------------------
-- Names (_names.py)

-- The upstream name, or nil, message, rule id.
function _M.validate_name(name)
    local subject = "upstream name " .. quote(name)
    if name == "" then
        return refuse("name.empty", subject, "is empty")
    end
    local _, length = gsub(name, "[^\128-\191]", "") -- characters, as Python counts them (UTF-8)
    if length > MAX_NAME_LENGTH then
        return refuse("name.length", subject, format("is %d characters long, over %d", length, MAX_NAME_LENGTH))
    end
    if find(name, "[^A-Za-z0-9_.%-]") then
        return refuse("name.charset", subject, "may hold only A-Z a-z 0-9 _ . -")
    end
    if not find(name, "^[A-Za-z0-9_]") then
        return refuse("name.first_char", subject, "must start with a letter, a digit or _")
    end
    return name
end

-- The key a name is stored and compared under (Python: name_key): nginx and Tengine compare upstream
-- names ignoring ASCII letter case; string.lower folds ASCII letters only.
function _M.name_key(name)
    return lower(name)
end

---------------------------------------------------------------------------------------------------
-- Addresses (_servers.py parse_host / parse_address / parse_port)

local function octet(s)
    return find(s, "^[0-9]+$") and #s <= 3 and (s == "0" or byte(s) ~= 48) and tonumber(s) <= 255
end

local function split_plain(s, sep)
    local parts, start = {}, 1
    while true do
        local at = find(s, sep, start, true)
        if not at then
            parts[#parts + 1] = sub(s, start)
            return parts
        end
        parts[#parts + 1] = sub(s, start, at - 1)
        start = at + 1
    end
end

local function is_ipv4(host)
    local parts = split_plain(host, ".")
    if #parts ~= 4 then
        return false
    end
    for i = 1, 4 do
        if not octet(parts[i]) then
            return false
        end
    end
    return true
end

-- The eight 16-bit groups of an IPv6 address (no zone), or nil when it is not one.
local function ipv6_groups(text)
    local parts = split_plain(text, ":")
    if #parts < 3 then
        return nil
    end
    local last = parts[#parts]
    if find(last, ".", 1, true) then -- a trailing dotted IPv4 address is the last two groups
        if not is_ipv4(last) then
            return nil
        end
        local o = split_plain(last, ".")
        parts[#parts] = format("%x", o[1] * 256 + o[2])
        parts[#parts + 1] = format("%x", o[3] * 256 + o[4])
    end
    local n, gap = #parts, nil
    if n > 9 then
        return nil
    end
    local head, tail = 1, n -- parts[head..tail] are groups, except the empty one at the gap
    if parts[1] == "" then
        if parts[2] ~= "" then
            return nil
        end
        head = 2
    end
    if parts[n] == "" then
        if parts[n - 1] ~= "" then
            return nil
        end
        tail = n - 1
    end
    for i = head, tail do
        if parts[i] == "" then
            if gap then
                return nil
            end
            gap = i
        elseif #parts[i] > 4 or not find(parts[i], "^%x+$") then
            return nil
        end
    end
    local given = tail - head + 1 - (gap and 1 or 0)
    if (gap and given > 7) or (not gap and given ~= 8) then
        return nil
    end
    local groups = {}
    for i = head, tail do
        if i == gap then
            for _ = 1, 8 - given do
                groups[#groups + 1] = 0
            end
        else
            groups[#groups + 1] = tonumber(parts[i], 16)
        end
    end
    return groups
end

-- The canonical text of an IPv6 address (RFC 5952: lower case, no leading zeros, the first longest
-- run of two or more zero groups as "::"; IPv4-mapped as ::ffff:a.b.c.d, as nginx prints it), or nil.
-- resolve.lua uses it for resolved addresses too.
function _M.ipv6_compressed(text)
    local g = ipv6_groups(text)
    if not g then
        return nil
    end
    if g[1] + g[2] + g[3] + g[4] + g[5] == 0 and g[6] == 0xffff then
        return format("::ffff:%d.%d.%d.%d", floor(g[7] / 256), g[7] % 256, floor(g[8] / 256), g[8] % 256)
    end
    local best, best_len, run = 0, 1, 0
    for i = 1, 8 do
        run = g[i] == 0 and run + 1 or 0
        if run > best_len then
            best, best_len = i - run + 1, run
        end
    end
    local out = {}
    for i = 1, 8 do
        out[i] = format("%x", g[i])
    end
    if best == 0 then
        return concat(out, ":")
    end
    return concat(out, ":", 1, best - 1) .. "::" .. concat(out, ":", best + best_len, 8)
end

-- The canonical host (IPv6 compressed, host names lower case), or nil, message, rule id.
local function parse_host(host, subject)
    if host == "" then
        return refuse("server.host_empty", subject, "the host is empty")
    end
    if find(host, ":", 1, true) then
        if find(host, "%", 1, true) then
            return refuse("server.ipv6_zone", subject, "IPv6 zone indexes (%...) are not supported by nginx")
        end
        local compressed = _M.ipv6_compressed(host)
        if not compressed then
            return refuse("server.ipv6_invalid", subject, quote(host) .. " is not an IPv6 address")
        end
        return compressed
    end
    if find(host, "^[0-9.]+$") then
        if not is_ipv4(host) then
            return refuse("server.ipv4_invalid", subject, quote(host) .. " is not a dotted IPv4 address "
                          .. "(four numbers 0-255, no leading zeros)")
        end
        return host
    end
    local name, last = lower(host), #host
    while last > 0 and byte(host, last) == 46 do -- trailing dots go (a loop: "%.+$" would backtrack)
        last = last - 1
    end
    if #host > 1 then
        name = sub(name, 1, last)
    end
    if #name > 253 then
        return refuse("server.hostname_length", subject, format("the host name is %d characters long, over 253",
                                                                 #name))
    end
    local labels = split_plain(name, ".")
    for i = 1, #labels do
        local label = labels[i]
        if #label > 63 or not find(label, "^[a-z0-9]") or not find(label, "[a-z0-9]$")
            or find(label, "[^a-z0-9-]") then
            return refuse("server.hostname_label", subject, quote(host) .. " is not a host name: each label is "
                          .. "1-63 letters, digits or hyphens, not starting or ending with a hyphen")
        end
    end
    if find(labels[#labels], "^[0-9]+$") then
        return refuse("server.hostname_numeric", subject, quote(host) .. " is not a host name: its last label "
                      .. "is all digits")
    end
    return name
end

local function parse_port(text, subject)
    if not digits(text, 5) then
        return refuse("server.port_syntax", subject, format("the port %s is not a number 1-65535", quote(text)))
    end
    local port = tonumber(text)
    if port < 1 or port > 65535 then
        return refuse("server.port_range", subject, format("the port %d is outside 1-65535", port))
    end
    return port
end

-- (canonical host, port) from "host:port", "[v6]:port" or "host"; nil, message, rule id otherwise.
local function parse_address(address, subject)
    if sub(address, 1, 5) == "unix:" then
        return refuse("server.unix", subject, "unix sockets are not supported; use host:port")
    end
    local host, port_text
    if sub(address, 1, 1) == "[" then
        local close = find(address, "]", 1, true)
        if not close then
            return refuse("server.bracket_unclosed", subject, "an IPv6 address opened with '[' is not closed")
        end
        host = sub(address, 2, close - 1)
        local rest = sub(address, close + 1)
        if not find(host, ":", 1, true) then
            return refuse("server.ipv6_invalid", subject, quote(host) .. " in brackets is not an IPv6 address")
        end
        if rest ~= "" and sub(rest, 1, 1) ~= ":" then
            return refuse("server.after_bracket", subject, "expected ':port' after the bracketed IPv6 address")
        end
        if rest ~= "" then
            port_text = sub(rest, 2)
        end
    else
        local first = find(address, ":", 1, true)
        if first and find(address, ":", first + 1, true) then
            return refuse("server.ipv6_unbracketed", subject, "an IPv6 address must be written in brackets, "
                          .. "like [2001:db8::1]:8080")
        end
        host = first and sub(address, 1, first - 1) or address
        port_text = first and sub(address, first + 1) or nil
    end
    local canonical, err, rule = parse_host(host, subject)
    if not canonical then
        return nil, err, rule
    end
    if port_text == nil then
        return canonical, DEFAULT_PORT
    end
    local port
    port, err, rule = parse_port(port_text, subject)
    if not port then
        return nil, err, rule
    end
    return canonical, port
end

---------------------------------------------------------------------------------------------------
-- Servers (_servers.py parse_server for strings, Server.spec / detail_line)

local function parse_number(key, value, subject)
    if not digits(value, 9) then
        return refuse("server." .. key .. "_int", subject, format("%s=%s is not a whole number", key, quote(value)))
    end
    local number = tonumber(value)
    local limits = LIMITS[key]
    if number < limits[1] or number > limits[2] then
        return refuse("server." .. key .. "_range", subject, format("%s=%d is outside %d-%d", key, number,
                                                                     limits[1], limits[2]))
    end
    return number
end

local TIME_UNITS = { [""] = 1, s = 1, m = 60, h = 3600, d = 86400, ms = 1 / 1000 }

local function parse_fail_timeout(value, subject)
    local number, unit = value:match("^([0-9]+)([a-z]*)$")
    if not number or #number > 9 or not TIME_UNITS[unit] then
        return refuse("server.fail_timeout_time", subject, format("fail_timeout=%s is not a time: use N, Ns, Nm, "
                                                                  .. "Nh or Nd", quote(value)))
    end
    number = tonumber(number)
    if unit == "ms" and number % 1000 ~= 0 then
        return refuse("server.fail_timeout_ms", subject, format("fail_timeout=%s is not a whole number of seconds "
                                                                .. "(nginx refuses milliseconds)", value))
    end
    local seconds = unit == "ms" and number / 1000 or number * TIME_UNITS[unit]
    if seconds > LIMITS.fail_timeout[2] then
        return refuse("server.fail_timeout_range", subject, format("fail_timeout=%ds is outside 0-%ds", seconds,
                                                                   LIMITS.fail_timeout[2]))
    end
    return seconds
end

local function server_address(host, port)
    if find(host, ":", 1, true) then
        return "[" .. host .. "]:" .. port
    end
    return host .. ":" .. port
end
_M.server_address = server_address

-- A server table from nginx's syntax without "server" and ";" (Python: parse_server(str)):
-- { host, port, address, weight, max_fails, fail_timeout, max_conns, backup, down }.
function _M.parse_server(value)
    local subject = "server " .. quote(value)
    if find(value, "[\128-\255]") then
        return refuse("server.ascii", subject, "only ASCII characters are allowed")
    end
    local text = strip(value)
    if find(text, "[;{}\"'#\\%c]") then
        return refuse("server.syntax", subject, "a server is 'host:port [parameter ...]' with no ; { } quotes, # "
                      .. "or control characters")
    end
    local words = {}
    for word in text:gmatch("[^ ]+") do
        words[#words + 1] = word
    end
    if #words == 0 then
        return refuse("server.empty", subject, "the server is empty")
    end
    if words[1] == "server" then
        return refuse("server.word_server", subject, "the word 'server' is not part of a server line's address")
    end
    local host, port, rule = parse_address(words[1], subject)
    if not host then
        return nil, port, rule
    end
    local server = { host = host, port = port, weight = 1, max_fails = 1, fail_timeout = 10, max_conns = 0,
                     backup = false, down = false }
    local given = {}
    for i = 2, #words do
        local word = words[i]
        local key, eq, value = word:match("^([^=]*)(=?)(.*)$")
        if given[key] then
            return refuse("server.param_twice", subject, key .. " is given twice")
        end
        if key == "backup" or key == "down" then
            if eq ~= "" then
                return refuse("server.flag_value", subject, format("%s is a flag and takes no value", key))
            end
            server[key] = true
        elseif LIMITS[key] and eq ~= "" then
            local number, err
            if key == "fail_timeout" then
                number, err, rule = parse_fail_timeout(value, subject)
            else
                number, err, rule = parse_number(key, value, subject)
            end
            if not number then
                return nil, err, rule
            end
            server[key] = number
        elseif LIMITS[key] then
            return refuse("server.param_needs_value", subject, format("%s needs a value, like %s=2", key, key))
        else
            return refuse("server.param_unknown", subject, format("unknown parameter %s; known: %s", quote(word),
                                                                  PARAMETERS))
        end
        given[key] = true
    end
    server.address = server_address(host, port)
    return server
end

-- "10.0.0.1:8080 weight=2 backup": Python's Server.spec().
function _M.server_spec(server)
    local words = { server.address }
    for _, key in ipairs({ "weight", "max_fails", "fail_timeout", "max_conns" }) do
        if server[key] ~= DEFAULTS[key] then
            words[#words + 1] = format(key == "fail_timeout" and "%s=%ds" or "%s=%d", key, server[key])
        end
    end
    if server.backup then
        words[#words + 1] = "backup"
    end
    if server.down then
        words[#words + 1] = "down"
    end
    return concat(words, " ")
end

-- Tengine's /detail line; ``address`` defaults to the server's own (api.lua passes the resolved one).
function _M.detail_line(server, address)
    return format("server %s weight=%d max_conns=%d max_fails=%d fail_timeout=%d backup=%d down=%d",
                  address or server.address, server.weight, server.max_conns, server.max_fails,
                  server.fail_timeout, server.backup and 1 or 0, server.down and 1 or 0)
end

---------------------------------------------------------------------------------------------------
-- Directives (_directives.py)

local BALANCING = { ip_hash = true, least_conn = true }
local NO_BACKUP = { ip_hash = true }
local KNOWN_DIRECTIVES = "ip_hash, least_conn, keepalive, keepalive_timeout, keepalive_requests, check, "
                         .. "check_http_send, check_http_expect_alive, check_keepalive_requests"
local COUNTS = { keepalive = 100000, keepalive_requests = 100000000, check_keepalive_requests = 100000000 }
-- check's keys: a number 1 to the bound (Tengine refuses 0; a port is 16 bits), or a set of words
local CHECK_KEYS = {
    interval = 999999999, rise = 999999999, fall = 999999999, timeout = 999999999, port = 65535,
    type = { tcp = true, http = true, ssl_hello = true, mysql = true, ajp = true, fastcgi = true },
    default_down = { ["true"] = true, ["false"] = true },
}
local CHECK_ORDER = { "interval", "rise", "fall", "timeout", "type", "default_down", "port" }
local EXPECT = { http_1xx = true, http_2xx = true, http_3xx = true, http_4xx = true, http_5xx = true }
local EXPECT_NAMES = "http_1xx, http_2xx, http_3xx, http_4xx, http_5xx"
local TIME_MS = { ms = 1, [""] = 1000, s = 1000, m = 60000, h = 3600000, d = 86400000 }
local MAX_TIME_MS = 2147483647
-- The order of directives after the balancing method (Python: _directives.ORDER)
local ORDER = { keepalive = 1, keepalive_timeout = 2, keepalive_requests = 3, check = 4, check_http_send = 5,
                check_http_expect_alive = 6, check_keepalive_requests = 7 }

-- The end of the double-quoted string that opens at i (its closing quote), or nil when it is not
-- closed; a backslash escapes the next character.
local function quoted_end(text, i)
    local j, n = i + 1, #text
    while j <= n do
        local c = byte(text, j)
        if c == 34 then
            return j
        end
        j = j + (c == 92 and 2 or 1)
    end
    return nil
end

-- Words split on space and tab; a double-quoted string is one word (quotes kept).
local function tokenize(text, subject)
    local words, i, n = {}, 1, #text
    while i <= n do
        local c = sub(text, i, i)
        if c == " " or c == "\t" then
            i = i + 1
        elseif c == '"' then
            local j = quoted_end(text, i)
            if not j then
                return refuse("directive.quote_unclosed", subject, "a double quote is not closed")
            end
            words[#words + 1] = sub(text, i, j)
            i = j + 1
        else
            local j = find(text, '[ \t"]', i) or n + 1
            words[#words + 1] = sub(text, i, j - 1)
            i = j
        end
    end
    return words
end

-- The text with each closed double-quoted string emptied, for the character check.
local function outside_quotes(text)
    local out, i, n = {}, 1, #text
    while i <= n do
        local j = byte(text, i) == 34 and quoted_end(text, i)
        if j and j <= n then
            out[#out + 1] = '""'
            i = j + 1
        else
            out[#out + 1] = sub(text, i, i)
            i = i + 1
        end
    end
    return concat(out)
end

-- One double-quoted string whose escapes are \r \n \t \" \\ and that holds no control character.
local function quoted_ok(s)
    if #s < 2 or byte(s) ~= 34 or quoted_end(s, 1) ~= #s then
        return false
    end
    local inner = sub(s, 2, -2)
    return not find(inner, "%c") and not find(gsub(inner, '\\[rnt"\\]', ""), "\\", 1, true)
end

-- The arguments in their one form (Python: _check_args), or nil, message, rule id.
local function check_args(name, args, subject)
    local n = #args
    if BALANCING[name] then
        if n > 0 then
            return refuse("directive.args", subject, name .. " takes no arguments")
        end
    elseif COUNTS[name] then
        if n ~= 1 then
            return refuse("directive.args", subject, format("write '%s N'", name))
        end
        local value = args[1]
        if not digits(value, 9) or tonumber(value) < 1 or tonumber(value) > COUNTS[name] then
            return refuse("directive.number", subject, format("%s must be a whole number 1-%d, not %s", name,
                                                              COUNTS[name], quote(value)))
        end
        return { format("%d", tonumber(value)) }
    elseif name == "keepalive_timeout" then
        local number, unit = (args[1] or ""):match("^([0-9]+)([a-z]*)$")
        if n ~= 1 or not number or #number > 9 or not TIME_MS[unit] then
            return refuse("directive.time", subject, "write 'keepalive_timeout TIME', like 60s or 500ms")
        end
        local ms = tonumber(number) * TIME_MS[unit]
        if ms > MAX_TIME_MS then
            return refuse("directive.time", subject, format("keepalive_timeout is at most %dms", MAX_TIME_MS))
        end
        return { ms % 1000 == 0 and format("%ds", ms / 1000) or format("%dms", ms) }
    elseif name == "check" then
        if n == 0 then
            return refuse("directive.args", subject, "write 'check key=value ...' with at least one key")
        end
        local given = {}
        for i = 1, n do
            local key, eq, value = args[i]:match("^([^=]*)(=?)(.*)$")
            local rule = CHECK_KEYS[key]
            if not rule or eq == "" then
                return refuse("directive.check_key", subject, format("check takes key=value with the keys "
                              .. "default_down, fall, interval, port, rise, timeout, type, not %s", quote(args[i])))
            end
            if given[key] then
                return refuse("directive.check_twice", subject, format("check: %s is given twice", key))
            end
            if type(rule) == "number" then
                if not digits(value, 9) or tonumber(value) < 1 or tonumber(value) > rule then
                    return refuse("directive.check_value", subject, format("check: %s=%s is not a whole number 1-%d",
                                                                           key, quote(value), rule))
                end
                value = format("%d", tonumber(value))
            elseif not rule[value] then
                return refuse("directive.check_value", subject, format("check: %s=%s is not valid", key, quote(value)))
            end
            given[key] = value
        end
        local out = {}
        for _, key in ipairs(CHECK_ORDER) do
            if given[key] then
                out[#out + 1] = key .. "=" .. given[key]
            end
        end
        return out
    elseif name == "check_http_send" then
        if n ~= 1 or not quoted_ok(args[1]) then
            return refuse("directive.http_send", subject, 'write check_http_send "REQUEST" with one double-quoted '
                          .. 'string (escapes: \\r \\n \\t \\" \\\\)')
        end
    elseif name == "check_http_expect_alive" then
        local seen = {}
        for i = 1, n do
            if not EXPECT[args[i]] or seen[args[i]] then
                n = 0
                break
            end
            seen[args[i]] = true
        end
        if n == 0 then
            return refuse("directive.expect_alive", subject, "check_http_expect_alive takes one or more of "
                          .. EXPECT_NAMES .. ", each once")
        end
        local out = { unpack(args) }
        table.sort(out)
        return out
    else
        return refuse("directive.unknown", subject, format("unknown upstream directive %s; known: %s",
                                                           quote(name), KNOWN_DIRECTIVES))
    end
    return args
end

-- { name = "keepalive", args = { "32" }, text = "keepalive 32" } from "keepalive 32" (";" allowed at
-- the end), or nil, message, rule id (Python: parse_directive).
function _M.parse_directive(value)
    local subject = "upstream directive " .. quote(value)
    if find(value, "[\128-\255]") then
        return refuse("directive.ascii", subject, "only ASCII characters are allowed")
    end
    local text = strip(value)
    if sub(text, -1) == ";" then
        text = strip(sub(text, 1, -2))
    end
    if text == "" then
        return refuse("directive.empty", subject, "the directive is empty")
    end
    if find(text, "[%z\1-\8\10-\31\127]") then
        return refuse("directive.control", subject, "control characters and line breaks are not allowed")
    end
    local bare = find(outside_quotes(text), "[;{}#'\\]")
    if bare then
        return refuse("directive.outside_quotes", subject, "; { } # ' and \\ are allowed only inside double quotes "
                      .. "(one directive per statement)")
    end
    local words, err, rule = tokenize(text, subject)
    if not words then
        return nil, err, rule
    end
    local name, args = words[1], { unpack(words, 2) }
    if name == "server" then
        return refuse("directive.server", subject, "a server line is not a directive")
    end
    args, err, rule = check_args(name, args, subject)
    if not args then
        return nil, err, rule
    end
    return { name = name, args = args, text = concat({ name, unpack(args) }, " ") }
end

---------------------------------------------------------------------------------------------------
-- An upstream (_upstream.py build_upstream) and a POST body / block content (_upstream_file.py)

-- parser() applied to every text; nil, message, rule id of the first refusal otherwise.
local function parse_all(texts, parser, pause)
    local out = {}
    for i = 1, #texts do
        local item, err, rule = parser(texts[i])
        if not item then
            return nil, err, rule
        end
        out[i] = item
        if pause and i % PAUSE_EVERY == 0 then
            pause()
        end
    end
    return out
end

local function any_backup(servers)
    for i = 1, #servers do
        if servers[i].backup then
            return true
        end
    end
    return false
end

-- { name, servers = {...} (in the given order), directives = {...} (balancing method first) } from
-- server strings and directive strings; nil, message, rule id when Python's build_upstream refuses.
function _M.build_upstream(name, server_texts, directive_texts, pause)
    local _, err, rule = _M.validate_name(name)
    if err then
        return nil, err, rule
    end
    local subject = "upstream " .. quote(name)
    local servers
    servers, err, rule = parse_all(server_texts, _M.parse_server, pause)
    if not servers then
        return nil, err, rule
    end
    local seen, primary = {}, false
    for i = 1, #servers do
        local address = servers[i].address
        if seen[address] then
            return refuse("server.duplicate", "server " .. quote(address), "the same address is listed twice")
        end
        seen[address] = true
        primary = primary or not servers[i].backup
    end
    if #servers == 0 then
        return refuse("upstream.no_servers", subject, "has no server line; nginx refuses an upstream without "
                      .. "servers (DELETE removes an upstream)")
    end
    if not primary then
        return refuse("upstream.all_backup", subject, "every server is a backup server; nginx needs one that is not")
    end
    local directives
    directives, err, rule = parse_all(directive_texts, _M.parse_directive)
    if not directives then
        return nil, err, rule
    end
    local names, balancing, ordered = {}, {}, {}
    for i = 1, #directives do
        local dname = directives[i].name
        if names[dname] then
            return refuse("directives.duplicate", subject, dname .. " is given more than once")
        end
        names[dname] = true
        if BALANCING[dname] then
            balancing[#balancing + 1] = dname
            ordered[#ordered + 1] = directives[i]
        end
    end
    if #balancing > 1 then
        return refuse("directives.balancing", subject, "only one balancing method per upstream, got "
                      .. concat(balancing, ", "))
    end
    for i = 1, #directives do
        if directives[i].name == "check_http_send" then
            local check
            for j = 1, #directives do
                check = directives[j].name == "check" and directives[j] or check
            end
            if not check then
                return refuse("directives.http_send_check", subject, "check_http_send needs a check directive "
                              .. "in the same upstream")
            end
            local http = false
            for j = 1, #check.args do
                http = http or check.args[j] == "type=http"
            end
            if directives[i].args[1] ~= '""' and not http then
                return refuse("directives.http_send_type", subject, "check_http_send needs check type=http")
            end
        end
    end
    for i = 1, #directives do
        local dname = directives[i].name
        if NO_BACKUP[dname] and any_backup(servers) then
            return refuse("upstream.backup_balancing", subject, dname .. " balancing does not support backup servers")
        end
        if not BALANCING[dname] then
            ordered[#ordered + 1] = directives[i]
        end
    end
    table.sort(ordered, function(a, b)
        return (BALANCING[a.name] and 0 or ORDER[a.name]) < (BALANCING[b.name] and 0 or ORDER[b.name])
    end)
    return { name = name, servers = servers, directives = ordered }
end

-- Tokens of nginx configuration text (Python: _upstream_file._tokens): words, "{", "}", ";";
-- comments dropped. Returns a list of { line, token } or nil, message, rule id.
function _M.tokens(text, pause)
    local out, i, n, line = {}, 1, #text, 1
    local step = 8 * PAUSE_EVERY
    while i <= n do
        if pause and #out >= step then
            step = step + 8 * PAUSE_EVERY
            pause()
        end
        local c = sub(text, i, i)
        if c == "\n" then
            line = line + 1
            i = i + 1
        elseif c == " " or c == "\t" or c == "\r" then
            i = i + 1
        elseif c == "#" then
            i = find(text, "\n", i, true) or n + 1
        elseif c == "{" or c == "}" or c == ";" then
            out[#out + 1] = { line, c }
            i = i + 1
        elseif c == '"' then
            local j = quoted_end(text, i)
            if not j then
                return refuse("block.quote_unclosed", "line " .. line, "a double quote is not closed")
            end
            out[#out + 1] = { line, sub(text, i, j) }
            local _, newlines = gsub(sub(text, i, j), "\n", "")
            line = line + newlines
            i = j + 1
        else
            local j = find(text, '[ \t\r\n{};#"]', i) or n + 1
            out[#out + 1] = { line, sub(text, i, j - 1) }
            i = j
        end
    end
    return out
end

-- Statements of a block's content from tokens[first..]: stops at "}" (returns its index) or at the
-- end (returns #tokens + 1). servers / directives are the texts build_upstream takes.
function _M.block_statements(tokens, first)
    local servers, directives, words = {}, {}, {}
    local i = first
    while i <= #tokens do
        local at, word = tokens[i][1], tokens[i][2]
        if word == "}" then
            if #words > 0 then
                return refuse("block.missing_semicolon", "line " .. at, "missing ';' after " .. quote(concat(words, " ")))
            end
            return servers, directives, i
        elseif word == "{" then
            return refuse("block.nested", "line " .. at, "blocks inside an upstream are not supported")
        elseif word == ";" then
            if #words == 0 then
                return refuse("block.empty_statement", "line " .. at, "an empty statement")
            end
            if words[1] == "server" then
                servers[#servers + 1] = concat(words, " ", 2)
            else
                directives[#directives + 1] = concat(words, " ")
            end
            words = {}
        else
            words[#words + 1] = word
        end
        i = i + 1
    end
    if #words > 0 then
        return refuse("block.missing_semicolon", "at the end", "missing ';' after " .. quote(concat(words, " ")))
    end
    return servers, directives, i
end

-- An upstream from a POST body: the content of an upstream block, nothing that closes it.
function _M.parse_body(name, body, pause)
    local tokens, err, rule = _M.tokens(body, pause)
    if not tokens then
        return nil, err, rule
    end
    local servers, directives, stop = _M.block_statements(tokens, 1)
    if not servers then
        return nil, directives, stop
    end
    if stop <= #tokens then
        return refuse("body.closes_block", "line " .. tokens[stop][1], "'}' would close the upstream block; a body "
                      .. "holds only server lines and upstream directives")
    end
    return _M.build_upstream(name, servers, directives, pause)
end

return _M
