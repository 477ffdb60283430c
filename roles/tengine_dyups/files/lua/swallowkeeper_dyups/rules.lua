-- swallowkeeper_dyups.rules: the upstream name, server, directive and body rules of the Lua flavor.
--
-- A line-by-line port of the collection's Python rules (plugins/module_utils/_names.py, _servers.py,
-- _directives.py, _upstream.py and the block parser of _upstream_file.py). Both implementations run
-- the same vectors (tests/vectors/*.json) and a differential test (tests/integration/test_lua_rules.py);
-- change one, change the other. Pure Lua: no ngx API, no I/O, no host name resolution (api.lua
-- resolves after these rules accepted a server).
--
-- Every function that can refuse returns nil plus a message worded like the Python ValidationError:
-- "invalid server '10.0.0.1:0': the port 0 is outside 1-65535".

local byte, sub, find, format, lower = string.byte, string.sub, string.find, string.format, string.lower
local concat, sort = table.concat, table.sort
local tonumber, type, floor = tonumber, type, math.floor

local _M = { _VERSION = "1" }

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

_M.MAX_NAME_LENGTH = MAX_NAME_LENGTH
_M.DEFAULT_PORT = DEFAULT_PORT
_M.LIMITS = LIMITS

_M.NAME_RULE = format("an upstream name is 1 to %d characters from A-Z a-z 0-9 _ . -, "
                      .. "and starts with a letter, a digit or _", MAX_NAME_LENGTH)

-- Python's repr() of a str, for messages (close enough: ASCII printable as is, the rest escaped).
local function py_repr(s)
    local quote = "'"
    if find(s, "'", 1, true) and not find(s, '"', 1, true) then
        quote = '"'
    end
    local out = {}
    for i = 1, #s do
        local b = byte(s, i)
        local c = sub(s, i, i)
        if c == "\\" then
            out[#out + 1] = "\\\\"
        elseif c == quote then
            out[#out + 1] = "\\" .. c
        elseif b == 9 then
            out[#out + 1] = "\\t"
        elseif b == 10 then
            out[#out + 1] = "\\n"
        elseif b == 13 then
            out[#out + 1] = "\\r"
        elseif b < 32 or b == 127 then
            out[#out + 1] = format("\\x%02x", b)
        else
            out[#out + 1] = c
        end
    end
    return quote .. concat(out) .. quote
end
_M.py_repr = py_repr

-- Python's str.isspace() set, in UTF-8: str.strip() and str.split() use it. Returns the byte length
-- of the whitespace character at position i, or 0.
local function ws_len(s, i)
    local b = byte(s, i)
    if b == nil then
        return 0
    end
    if b == 32 or (b >= 9 and b <= 13) or (b >= 28 and b <= 31) then
        return 1
    end
    if b == 0xC2 then
        local b2 = byte(s, i + 1)
        if b2 == 0x85 or b2 == 0xA0 then
            return 2
        end
    elseif b == 0xE1 then
        if byte(s, i + 1) == 0x9A and byte(s, i + 2) == 0x80 then
            return 3
        end
    elseif b == 0xE2 then
        local b2, b3 = byte(s, i + 1, i + 2)
        if b2 == 0x80 and b3 and ((b3 >= 0x80 and b3 <= 0x8A) or b3 == 0xA8 or b3 == 0xA9 or b3 == 0xAF) then
            return 3
        end
        if b2 == 0x81 and b3 == 0x9F then
            return 3
        end
    elseif b == 0xE3 then
        if byte(s, i + 1) == 0x80 and byte(s, i + 2) == 0x80 then
            return 3
        end
    end
    return 0
end

-- The byte length of the character that ends at position j (UTF-8), for stripping from the right.
local function ws_len_before(s, j)
    for len = 1, 3 do
        local i = j - len + 1
        if i >= 1 and ws_len(s, i) == len then
            return len
        end
    end
    return 0
end

local function py_strip(s)
    local i, j = 1, #s
    while i <= j do
        local n = ws_len(s, i)
        if n == 0 then
            break
        end
        i = i + n
    end
    while j >= i do
        local n = ws_len_before(s, j)
        if n == 0 then
            break
        end
        j = j - n
    end
    return sub(s, i, j)
end
_M.py_strip = py_strip

local function py_split(s)
    local words, i, n, start = {}, 1, #s, nil
    while i <= n do
        local w = ws_len(s, i)
        if w > 0 then
            if start then
                words[#words + 1] = sub(s, start, i - 1)
                start = nil
            end
            i = i + w
        else
            start = start or i
            i = i + 1
        end
    end
    if start then
        words[#words + 1] = sub(s, start, n)
    end
    return words
end
_M.py_split = py_split

-- Number of characters (code points) of a UTF-8 string: what Python's len() counts.
local function char_count(s)
    local count = 0
    for i = 1, #s do
        local b = byte(s, i)
        if b < 0x80 or b >= 0xC0 then
            count = count + 1
        end
    end
    return count
end

-- The character that starts at byte i (a whole UTF-8 sequence).
local function char_at(s, i)
    local b = byte(s, i)
    local len = 1
    if b >= 0xF0 then
        len = 4
    elseif b >= 0xE0 then
        len = 3
    elseif b >= 0xC0 then
        len = 2
    end
    return sub(s, i, i + len - 1)
end

local function has_control(s, allow_tab)
    for i = 1, #s do
        local b = byte(s, i)
        if (b < 32 and not (allow_tab and b == 9)) or b == 127 then
            return true
        end
    end
    return false
end

---------------------------------------------------------------------------------------------------
-- Names (_names.py)

local function describe(char)
    if ws_len(char, 1) == #char then
        return "whitespace"
    end
    local b = byte(char, 1)
    if #char == 1 and (b < 32 or b == 127) then
        return format("a control character (0x%02x)", b)
    end
    return py_repr(char)
end

function _M.name_problem(name)
    if type(name) ~= "string" then
        return "must be a string, not " .. type(name)
    end
    if name == "" then
        return "is empty"
    end
    local length = char_count(name)
    if length > MAX_NAME_LENGTH then
        return format("is %d characters long, over the limit of %d", length, MAX_NAME_LENGTH)
    end
    local bad = find(name, "[^A-Za-z0-9_.%-]")
    if bad then
        return "contains " .. describe(char_at(name, bad))
    end
    if not find(name, "^[A-Za-z0-9_]") then
        return "starts with " .. py_repr(sub(name, 1, 1))
    end
    return nil
end

-- The name, or nil and "invalid upstream name '...': <problem>; <rule>".
function _M.validate_name(name)
    local problem = _M.name_problem(name)
    if problem then
        return nil, format("invalid upstream name %s: %s; %s",
                           type(name) == "string" and py_repr(name) or tostring(name), problem, _M.NAME_RULE)
    end
    return name
end

---------------------------------------------------------------------------------------------------
-- Addresses (_servers.py parse_host / parse_address / parse_port, Python's ipaddress for IPv6)

local HEX = "^[0-9A-Fa-f]*$"

local function ipv4_octet_ok(octet)
    -- Python's IPv4Address._parse_octet
    if octet == "" or not find(octet, "^[0-9]+$") or #octet > 3 then
        return false
    end
    if octet ~= "0" and sub(octet, 1, 1) == "0" then
        return false
    end
    return tonumber(octet) <= 255
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

-- Python's IPv6Address(host).compressed, or nil when Python would refuse the address.
local function ipv6_compressed(text)
    if find(text, "/", 1, true) then
        return nil
    end
    local addr, scope = text, nil
    local pct = find(text, "%", 1, true)
    if pct then
        addr, scope = sub(text, 1, pct - 1), sub(text, pct + 1)
        if scope == "" or find(scope, "%", 1, true) then
            return nil
        end
    end
    if addr == "" then
        return nil
    end
    local parts = split_plain(addr, ":")
    if #parts < 3 then
        return nil
    end
    if find(parts[#parts], ".", 1, true) then
        local octets = split_plain(parts[#parts], ".")
        if #octets ~= 4 then
            return nil
        end
        for i = 1, 4 do
            if not ipv4_octet_ok(octets[i]) then
                return nil
            end
        end
        parts[#parts] = format("%x", tonumber(octets[1]) * 256 + tonumber(octets[2]))
        parts[#parts + 1] = format("%x", tonumber(octets[3]) * 256 + tonumber(octets[4]))
    end
    if #parts > 9 then
        return nil
    end
    local skip
    for i = 2, #parts - 1 do
        if parts[i] == "" then
            if skip then
                return nil
            end
            skip = i
        end
    end
    local hi, lo, skipped
    if skip then
        hi = skip - 1
        lo = #parts - skip
        if parts[1] == "" then
            hi = hi - 1
            if hi ~= 0 then
                return nil
            end
        end
        if parts[#parts] == "" then
            lo = lo - 1
            if lo ~= 0 then
                return nil
            end
        end
        skipped = 8 - (hi + lo)
        if skipped < 1 then
            return nil
        end
    else
        if #parts ~= 8 or parts[1] == "" or parts[#parts] == "" then
            return nil
        end
        hi, lo, skipped = #parts, 0, 0
    end
    local groups = {}
    local function hextet(s)
        if s == "" or #s > 4 or not find(s, HEX) then
            return nil
        end
        return tonumber(s, 16)
    end
    for i = 1, hi do
        local value = hextet(parts[i])
        if not value then
            return nil
        end
        groups[#groups + 1] = value
    end
    for _ = 1, skipped do
        groups[#groups + 1] = 0
    end
    for i = #parts - lo + 1, #parts do
        local value = hextet(parts[i])
        if not value then
            return nil
        end
        groups[#groups + 1] = value
    end
    -- an IPv4-mapped address reads ::ffff:a.b.c.d (Python: ipv4_mapped; nginx prints it so)
    if groups[1] == 0 and groups[2] == 0 and groups[3] == 0 and groups[4] == 0 and groups[5] == 0
        and groups[6] == 0xffff and not scope then
        return format("::ffff:%d.%d.%d.%d", floor(groups[7] / 256), groups[7] % 256, floor(groups[8] / 256),
                      groups[8] % 256)
    end
    -- _compress_hextets: the first longest run (> 1) of zero groups becomes "::"
    local best_start, best_len, run_start, run_len = 0, 0, 0, 0
    for i = 1, 8 do
        if groups[i] == 0 then
            run_len = run_len + 1
            if run_start == 0 then
                run_start = i
            end
            if run_len > best_len then
                best_len, best_start = run_len, run_start
            end
        else
            run_len, run_start = 0, 0
        end
    end
    local out = {}
    if best_len > 1 then
        for i = 1, best_start - 1 do
            out[#out + 1] = format("%x", groups[i])
        end
        local head = concat(out, ":")
        out = {}
        for i = best_start + best_len, 8 do
            out[#out + 1] = format("%x", groups[i])
        end
        addr = head .. "::" .. concat(out, ":")
    else
        for i = 1, 8 do
            out[#out + 1] = format("%x", groups[i])
        end
        addr = concat(out, ":")
    end
    if scope then
        return addr .. "%" .. scope
    end
    return addr
end
_M.ipv6_compressed = ipv6_compressed

local function server_error(shown, rule)
    return nil, format("invalid server %s: %s", py_repr(shown), rule)
end

local function is_ipv4(host)
    if not find(host, "^[0-9.]+$") then
        return false
    end
    local parts = split_plain(host, ".")
    if #parts ~= 4 then
        return false
    end
    for i = 1, 4 do
        local part = parts[i]
        if part == "" or #part > 3 or (#part > 1 and sub(part, 1, 1) == "0") or tonumber(part) > 255 then
            return false
        end
    end
    return true
end

-- The canonical host (IPv6 compressed, host names lower case), or nil and a message.
function _M.parse_host(host, shown)
    shown = shown or host
    if host == "" then
        return server_error(shown, "the host is empty")
    end
    if find(host, "[\128-\255]") then
        return server_error(shown, "only ASCII characters are allowed")
    end
    if find(host, ":", 1, true) then
        if find(host, "%", 1, true) then
            return server_error(shown, py_repr(host) .. ": IPv6 zone indexes (%...) are not supported by nginx")
        end
        local compressed = ipv6_compressed(host)
        if not compressed then
            return server_error(shown, py_repr(host) .. " is not an IPv6 address")
        end
        return compressed
    end
    if find(host, "^[0-9.]+$") then
        if not is_ipv4(host) then
            return server_error(shown, py_repr(host) .. " is not a dotted IPv4 address "
                                .. "(four numbers 0-255, no leading zeros)")
        end
        return host
    end
    -- Python's str.lower(): ASCII, plus the one non-ASCII character whose lower case is ASCII
    -- (U+212A KELVIN SIGN -> 'k'); every other non-ASCII character fails the label rule either way.
    local name = lower((host:gsub("\226\132\170", "k")))
    if sub(host, -1) == "." and #host > 1 then
        name = name:gsub("%.+$", "")
    end
    if char_count(name) > 253 then
        return server_error(shown, format("the host name is %d characters long, over 253", char_count(name)))
    end
    local labels = split_plain(name, ".")
    for i = 1, #labels do
        local label = labels[i]
        if #label < 1 or #label > 63 or not find(label, "^[a-z0-9]") or not find(label, "[a-z0-9]$")
            or find(label, "[^a-z0-9-]") then
            return server_error(shown, py_repr(host) .. " is not a host name: each dot-separated label is 1-63 "
                                .. "letters, digits or hyphens, and does not start or end with a hyphen")
        end
    end
    if find(labels[#labels], "^[0-9]+$") then
        return server_error(shown, py_repr(host) .. " is not a host name: its last label is all digits")
    end
    return name
end

function _M.parse_port(text, shown)
    if not find(text, "^[0-9]+$") or #text > 5 then
        return server_error(shown, format("the port %s is not a number 1-65535", py_repr(text)))
    end
    local port = tonumber(text)
    if port < 1 or port > 65535 then
        return server_error(shown, format("the port %d is outside 1-65535", port))
    end
    return port
end

-- (canonical host, port) from "host:port", "[v6]:port" or "host"; nil and a message otherwise.
function _M.parse_address(address, shown)
    shown = shown or address
    if sub(address, 1, 5) == "unix:" then
        return server_error(shown, "unix sockets are not supported; use host:port")
    end
    local host, port_text
    if sub(address, 1, 1) == "[" then
        local close = find(address, "]", 1, true)
        if not close then
            return server_error(shown, "an IPv6 address opened with '[' is not closed with ']'")
        end
        host = sub(address, 2, close - 1)
        local rest = sub(address, close + 1)
        if not find(host, ":", 1, true) then
            return server_error(shown, py_repr(host) .. " in brackets is not an IPv6 address")
        end
        if rest ~= "" and sub(rest, 1, 1) ~= ":" then
            return server_error(shown, "expected ':port' after the bracketed IPv6 address")
        end
        if rest ~= "" then
            port_text = sub(rest, 2)
        end
    else
        local first = find(address, ":", 1, true)
        if first and find(address, ":", first + 1, true) then
            return server_error(shown, "an IPv6 address must be written in brackets, like [2001:db8::1]:8080")
        end
        if first then
            host, port_text = sub(address, 1, first - 1), sub(address, first + 1)
        else
            host = address
        end
    end
    local canonical, err = _M.parse_host(host, shown)
    if not canonical then
        return nil, err
    end
    if port_text == nil then
        return canonical, DEFAULT_PORT
    end
    local port
    port, err = _M.parse_port(port_text, shown)
    if not port then
        return nil, err
    end
    return canonical, port
end

---------------------------------------------------------------------------------------------------
-- Servers (_servers.py parse_server for strings, Server.spec / detail_line)

local function parse_number(key, value, shown)
    if not find(value, "^[0-9]+$") or #value > 9 then
        return server_error(shown, format("%s=%s is not a whole number", key, py_repr(value)))
    end
    local number = tonumber(value)
    local limits = LIMITS[key]
    if number < limits[1] or number > limits[2] then
        return server_error(shown, format("%s=%d is outside %d-%d", key, number, limits[1], limits[2]))
    end
    return number
end

local TIME_UNITS = { [""] = 1, s = 1, m = 60, h = 3600, d = 86400 }

function _M.parse_fail_timeout(value, shown)
    local digits, unit = value:match("^([0-9]+)([a-z]*)$")
    if not digits or #digits > 9 or not (TIME_UNITS[unit] or unit == "ms") then
        return server_error(shown, format("fail_timeout=%s is not a time: use N, Ns, Nm, Nh or Nd", py_repr(value)))
    end
    local number, seconds = tonumber(digits), nil
    if unit == "ms" then
        if number % 1000 ~= 0 then
            return server_error(shown, format("fail_timeout=%s is not a whole number of seconds; nginx reads "
                                              .. "fail_timeout in seconds and refuses milliseconds", value))
        end
        seconds = floor(number / 1000)
    else
        seconds = number * TIME_UNITS[unit]
    end
    if seconds > LIMITS.fail_timeout[2] then
        return server_error(shown, format("fail_timeout=%ds is outside 0-%ds", seconds, LIMITS.fail_timeout[2]))
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
    if find(value, "[\128-\255]") then
        return server_error(value, "only ASCII characters are allowed")
    end
    local text = py_strip(value)
    if find(text, "[;{}\"'#\\]") or has_control(text, false) then
        return server_error(text, "a server is written as 'host:port [parameter ...]' with no ; { } quotes, "
                                  .. "# or control characters")
    end
    local words = py_split(text)
    if #words == 0 then
        return server_error(text, "the server is empty")
    end
    if words[1] == "server" then
        return server_error(text, "write the server without the word 'server', like '10.0.0.1:8080 weight=2'")
    end
    local host, port = _M.parse_address(words[1], text)
    if not host then
        return nil, port
    end
    local server = { host = host, port = port, weight = 1, max_fails = 1, fail_timeout = 10, max_conns = 0,
                     backup = false, down = false }
    local given = {}
    for i = 2, #words do
        local word = words[i]
        local eq = find(word, "=", 1, true)
        local key, value = word, nil
        if eq then
            key, value = sub(word, 1, eq - 1), sub(word, eq + 1)
        end
        if given[key] then
            return server_error(text, key .. " is given twice")
        end
        if key == "backup" or key == "down" then
            if eq then
                return server_error(text, format("%s is a flag and takes no value: write '%s'", key, key))
            end
            server[key] = true
        elseif LIMITS[key] and eq then
            local number, err
            if key == "fail_timeout" then
                number, err = _M.parse_fail_timeout(value, text)
            else
                number, err = parse_number(key, value, text)
            end
            if not number then
                return nil, err
            end
            server[key] = number
        elseif LIMITS[key] then
            return server_error(text, format("%s needs a value, like %s=2", key, key))
        else
            return server_error(text, format("unknown parameter %s; known: %s", py_repr(word), PARAMETERS))
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
local CHECK_KEYS = {
    interval = "digits", rise = "digits", fall = "digits", timeout = "digits", port = "digits",
    type = { tcp = true, http = true, ssl_hello = true, mysql = true, ajp = true, fastcgi = true },
    default_down = { ["true"] = true, ["false"] = true },
}
local CHECK_KEY_NAMES = "default_down, fall, interval, port, rise, timeout, type"
local EXPECT = { http_2xx = true, http_3xx = true, http_4xx = true, http_5xx = true }
_M.BALANCING = BALANCING

local function directive_error(value, rule)
    return nil, format("invalid upstream directive %s: %s", py_repr(value), rule)
end

local function digits9(value)
    return find(value, "^[0-9]+$") and #value <= 9
end

-- Python's tokenize(): words split on space and tab; a double-quoted string is one word.
local function tokenize(text, value)
    local words, i, n = {}, 1, #text
    while i <= n do
        local c = sub(text, i, i)
        if c == " " or c == "\t" then
            i = i + 1
        elseif c == '"' then
            local j = i + 1
            while j <= n and sub(text, j, j) ~= '"' do
                j = j + (sub(text, j, j) == "\\" and 2 or 1)
            end
            if j > n then
                return directive_error(value, "a double quote is not closed")
            end
            words[#words + 1] = sub(text, i, j)
            i = j + 1
        else
            local j = i
            while j <= n do
                local d = sub(text, j, j)
                if d == " " or d == "\t" or d == '"' then
                    break
                end
                j = j + 1
            end
            words[#words + 1] = sub(text, i, j - 1)
            i = j
        end
    end
    return words
end

-- Python's _QUOTED_RE: "(?:[^"\\\x00-\x1f\x7f]|\\[rnt"\\])*"
local function quoted_ok(s)
    if #s < 2 or sub(s, 1, 1) ~= '"' or sub(s, -1) ~= '"' then
        return false
    end
    local i, n = 2, #s - 1
    while i <= n do
        local b = byte(s, i)
        if b == 92 then
            local e = sub(s, i + 1, i + 1)
            if i + 1 > n or not (e == "r" or e == "n" or e == "t" or e == '"' or e == "\\") then
                return false
            end
            i = i + 2
        elseif b == 34 or b < 32 or b == 127 then
            return false
        else
            i = i + 1
        end
    end
    return true
end

-- Python's re.sub(r'"(?:[^"\\]|\\.)*"', '""', text): quoted strings emptied, for the character check.
local function outside_quotes(text)
    local out, i, n = {}, 1, #text
    while i <= n do
        local c = sub(text, i, i)
        local closed
        if c == '"' then
            local j = i + 1
            while j <= n do
                local d = sub(text, j, j)
                if d == '"' then
                    closed = j
                    break
                elseif d == "\\" then
                    if j + 1 > n or byte(text, j + 1) == 10 then
                        break
                    end
                    j = j + 2
                elseif byte(text, j) == 10 then
                    break
                else
                    j = j + 1
                end
            end
        end
        if closed then
            out[#out + 1] = '""'
            i = closed + 1
        else
            out[#out + 1] = c
            i = i + 1
        end
    end
    return concat(out)
end

local function int_in(value, text, low, high, what)
    if not digits9(value) or tonumber(value) < low or tonumber(value) > high then
        return directive_error(text, format("%s must be a whole number %d-%d, not %s", what, low, high,
                                            py_repr(value)))
    end
    return true
end

local function check_args(value, name, args)
    local n = #args
    if name == "ip_hash" or name == "least_conn" then
        if n > 0 then
            return directive_error(value, name .. " takes no arguments")
        end
    elseif name == "keepalive" then
        if n ~= 1 then
            return directive_error(value, "write 'keepalive N'")
        end
        return int_in(args[1], value, 1, 100000, "keepalive")
    elseif name == "keepalive_requests" or name == "check_keepalive_requests" then
        if n ~= 1 then
            return directive_error(value, format("write '%s N'", name))
        end
        return int_in(args[1], value, 1, 100000000, name)
    elseif name == "keepalive_timeout" then
        local digits, unit = (args[1] or ""):match("^([0-9]+)([a-z]*)$")
        if n ~= 1 or not digits or #digits > 9 or not (TIME_UNITS[unit] or unit == "ms") then
            return directive_error(value, "write 'keepalive_timeout TIME', like 60s or 500ms")
        end
    elseif name == "check" then
        local seen = {}
        for i = 1, n do
            local arg = args[i]
            local eq = find(arg, "=", 1, true)
            local key = eq and sub(arg, 1, eq - 1) or arg
            local rule = CHECK_KEYS[key]
            if not rule or not eq then
                return directive_error(value, format("check takes key=value from %s, not %s", CHECK_KEY_NAMES,
                                                     py_repr(arg)))
            end
            if seen[key] then
                return directive_error(value, format("check: %s is given twice", key))
            end
            seen[key] = true
            local v = sub(arg, eq + 1)
            local ok
            if rule == "digits" then
                ok = digits9(v)
            else
                ok = rule[v]
            end
            if not ok then
                return directive_error(value, format("check: %s=%s is not valid", key, py_repr(v)))
            end
        end
    elseif name == "check_http_send" then
        if n ~= 1 or not quoted_ok(args[1]) then
            return directive_error(value, 'write check_http_send "REQUEST" with one double-quoted string '
                                          .. '(escapes: \\r \\n \\t \\" \\\\)')
        end
    elseif name == "check_http_expect_alive" then
        local seen = {}
        if n == 0 then
            return directive_error(value, "check_http_expect_alive takes one or more of "
                                          .. "http_2xx, http_3xx, http_4xx, http_5xx")
        end
        for i = 1, n do
            if not EXPECT[args[i]] or seen[args[i]] then
                return directive_error(value, "check_http_expect_alive takes one or more of "
                                              .. "http_2xx, http_3xx, http_4xx, http_5xx")
            end
            seen[args[i]] = true
        end
    else
        return directive_error(value, format("unknown upstream directive %s; known: %s (servers go in 'servers')",
                                             py_repr(name), KNOWN_DIRECTIVES))
    end
    return true
end

-- { name = "keepalive", args = { "32" }, text = "keepalive 32" } from "keepalive 32" (";" allowed at
-- the end), or nil and a message (Python: parse_directive).
function _M.parse_directive(value)
    local text = py_strip(value)
    if sub(text, -1) == ";" then
        text = py_strip(sub(text, 1, -2))
        -- Python: text[:-1].rstrip(); the left side is already stripped
    end
    if text == "" then
        return directive_error(value, "the directive is empty")
    end
    if find(text, "[\128-\255]") then
        return directive_error(value, "only ASCII characters are allowed")
    end
    if has_control(text, true) then
        return directive_error(value, "control characters and line breaks are not allowed")
    end
    local bare = outside_quotes(text)
    for _, char in ipairs({ ";", "{", "}", "#", "'", "\\" }) do
        if find(bare, char, 1, true) then
            return directive_error(value, format("%s is not allowed outside double quotes (one directive per entry)",
                                                 py_repr(char)))
        end
    end
    local words, err = tokenize(text, value)
    if not words then
        return nil, err
    end
    local name = words[1]
    local args = {}
    for i = 2, #words do
        args[#args + 1] = words[i]
    end
    if name == "server" then
        return directive_error(value, "servers go in 'servers', not in 'directives'")
    end
    local ok
    ok, err = check_args(value, name, args)
    if not ok then
        return nil, err
    end
    return { name = name, args = args, text = concat(words, " ") }
end

---------------------------------------------------------------------------------------------------
-- An upstream (_upstream.py build_upstream) and a POST body / block content (_upstream_file.py)

local function list_repr(values)
    local out = {}
    for i = 1, #values do
        out[i] = py_repr(values[i])
    end
    return "[" .. concat(out, ", ") .. "]"
end

-- parser() applied to every text; nil and the first refusal's message otherwise.
local function parse_all(texts, parser)
    local out = {}
    for i = 1, #texts do
        local item, err = parser(texts[i])
        if not item then
            return nil, err
        end
        out[i] = item
    end
    return out
end

-- { name, servers = {...} (in the given order), directives = {...} (balancing method first) } from
-- server strings and directive strings; nil and a message when Python's build_upstream refuses.
function _M.build_upstream(name, server_texts, directive_texts)
    local _, err = _M.validate_name(name)
    if err then
        return nil, err
    end
    local servers
    servers, err = parse_all(server_texts, _M.parse_server)
    if not servers then
        return nil, err
    end
    local seen = {}
    for i = 1, #servers do
        local address = servers[i].address
        if seen[address] then
            return nil, format("invalid server %s: the same address is listed twice in one upstream",
                               py_repr(address))
        end
        seen[address] = true
    end
    if #servers == 0 then
        return nil, format("invalid upstream %s: has no servers; nginx refuses an upstream without servers "
                           .. "(use state=absent to remove it)", py_repr(name))
    end
    local primary = false
    for i = 1, #servers do
        if not servers[i].backup then
            primary = true
        end
    end
    if not primary then
        return nil, format("invalid upstream %s: every server is a backup server; nginx needs at least one that is "
                           .. "not (Tengine answers 500)", py_repr(name))
    end
    local directives
    directives, err = parse_all(directive_texts, _M.parse_directive)
    if not directives then
        return nil, err
    end
    local names, balancing = {}, {}
    for i = 1, #directives do
        local dname = directives[i].name
        if names[dname] then
            return nil, format("invalid upstream directives %s: %s is given more than once",
                               list_repr(directive_texts), dname)
        end
        names[dname] = true
        if BALANCING[dname] then
            balancing[#balancing + 1] = dname
        end
    end
    if #balancing > 1 then
        return nil, format("invalid upstream directives %s: only one balancing method per upstream, got %s",
                           list_repr(directive_texts), concat(balancing, ", "))
    end
    for i = 1, #directives do
        local dname = directives[i].name
        if NO_BACKUP[dname] then
            for j = 1, #servers do
                if servers[j].backup then
                    return nil, format("invalid upstream %s: nginx's %s balancing does not support backup servers",
                                       py_repr(name), dname)
                end
            end
        end
    end
    local ordered = {}
    for i = 1, #directives do
        if BALANCING[directives[i].name] then
            ordered[#ordered + 1] = directives[i]
        end
    end
    for i = 1, #directives do
        if not BALANCING[directives[i].name] then
            ordered[#ordered + 1] = directives[i]
        end
    end
    return { name = name, servers = servers, directives = ordered }
end

-- Tokens of nginx configuration text (Python: _upstream_file._tokens): words, "{", "}", ";";
-- comments dropped. Returns a list of { line, token } or nil and a message.
function _M.tokens(text)
    local out, i, n, line = {}, 1, #text, 1
    while i <= n do
        local c = sub(text, i, i)
        if c == "\n" then
            line = line + 1
            i = i + 1
        elseif c == " " or c == "\t" or c == "\r" then
            i = i + 1
        elseif c == "#" then
            while i <= n and sub(text, i, i) ~= "\n" do
                i = i + 1
            end
        elseif c == "{" or c == "}" or c == ";" then
            out[#out + 1] = { line, c }
            i = i + 1
        elseif c == '"' then
            local j = i + 1
            while j <= n and sub(text, j, j) ~= '"' do
                j = j + (sub(text, j, j) == "\\" and 2 or 1)
            end
            if j > n then
                return nil, format("line %d: a double quote is not closed", line)
            end
            out[#out + 1] = { line, sub(text, i, j) }
            local _, newlines = sub(text, i, j):gsub("\n", "")
            line = line + newlines
            i = j + 1
        else
            local j = i
            while j <= n do
                local d = sub(text, j, j)
                if d == " " or d == "\t" or d == "\r" or d == "\n" or d == "{" or d == "}" or d == ";"
                    or d == "#" or d == '"' then
                    break
                end
                j = j + 1
            end
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
                return nil, format("line %d: missing ';' after %s", at, py_repr(concat(words, " ")))
            end
            return servers, directives, i
        elseif word == "{" then
            return nil, format("line %d: blocks inside an upstream are not supported", at)
        elseif word == ";" then
            if #words == 0 then
                return nil, format("line %d: an empty statement", at)
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
        return nil, format("missing ';' after %s", py_repr(concat(words, " ")))
    end
    return servers, directives, i
end

-- An upstream from a POST body: the content of an upstream block, nothing that closes it.
function _M.parse_body(name, body)
    local tokens, err = _M.tokens(body)
    if not tokens then
        return nil, "the body is not valid: " .. err
    end
    local servers, directives, stop = _M.block_statements(tokens, 1)
    if not servers then
        return nil, "the body is not valid: " .. directives
    end
    if stop <= #tokens then
        return nil, format("the body is not valid: line %d: '}' would close the upstream block; a body holds "
                           .. "only server lines and upstream directives", tokens[stop][1])
    end
    return _M.build_upstream(name, servers, directives)
end

-- Python's Server.sort_key order (backup, kind, host, port), for callers that want a stable order.
function _M.sort_servers(servers)
    local function kind(host)
        if find(host, ":", 1, true) then
            return "ipv6"
        end
        if is_ipv4(host) then
            return "ipv4"
        end
        return "hostname"
    end
    sort(servers, function(a, b)
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

return _M
