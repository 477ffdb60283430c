-- swallowkeeper_dyups.resolve: host name resolution at POST time (and when the upstream file is loaded).
--
-- Tengine resolves a host name in a server line once, when the upstream is added, through the C
-- library (ngx_parse_url -> getaddrinfo): /etc/hosts, then DNS per /etc/nsswitch.conf and
-- /etc/resolv.conf. This module does the same through LuaJIT's FFI, so the Lua flavor resolves
-- exactly what Tengine would. getaddrinfo blocks the worker for as long as the lookup takes: that
-- is acceptable on the management path only (it never runs for proxied requests).
--
-- resolve(host) -> { "10.0.0.1", "2001:db8::1", ... } (IPv4 first, then IPv6, like nginx; IPv6 in
-- Python's compressed form without brackets), or nil and a reason. IP literals are returned as is.
--
-- configure({ hosts_file = PATH }) (state.init's option of the same name) resolves from that file
-- alone (the /etc/hosts format) and never asks DNS: for sites that want no DNS dependency on the
-- management path, and for tests, which must not send a query off the machine.

local ffi = require("ffi")
local rules = require("swallowkeeper_dyups.rules")

local C = ffi.C
local format, find = string.format, string.find

local _M = {}

pcall(ffi.cdef, [[
struct swallowkeeper_dyups_addrinfo {
    int ai_flags;
    int ai_family;
    int ai_socktype;
    int ai_protocol;
    uint32_t ai_addrlen;
    void *ai_addr;
    char *ai_canonname;
    struct swallowkeeper_dyups_addrinfo *ai_next;
};
struct swallowkeeper_dyups_sockaddr_in {
    uint16_t sin_family;
    uint16_t sin_port;
    uint8_t sin_addr[4];
    uint8_t sin_zero[8];
};
struct swallowkeeper_dyups_sockaddr_in6 {
    uint16_t sin6_family;
    uint16_t sin6_port;
    uint32_t sin6_flowinfo;
    uint8_t sin6_addr[16];
    uint32_t sin6_scope_id;
};
int getaddrinfo(const char *node, const char *service,
                const struct swallowkeeper_dyups_addrinfo *hints,
                struct swallowkeeper_dyups_addrinfo **res);
void freeaddrinfo(struct swallowkeeper_dyups_addrinfo *res);
const char *gai_strerror(int errcode);
]])

local AF_INET, AF_INET6, SOCK_STREAM = 2, 10, 1

local function ipv4_text(addr)
    return format("%d.%d.%d.%d", addr[0], addr[1], addr[2], addr[3])
end

local function ipv6_text(addr)
    local groups = {}
    for i = 0, 7 do
        groups[#groups + 1] = format("%x", addr[2 * i] * 256 + addr[2 * i + 1])
    end
    return rules.ipv6_compressed(table.concat(groups, ":"))
end

local hosts_file

function _M.configure(options)
    hosts_file = options and options.hosts_file or nil
end

-- Addresses of ``host`` in the hosts file (names compare ignoring case), IPv4 first; nil when none.
local function from_hosts_file(host)
    local handle, err = io.open(hosts_file, "r")
    if not handle then
        return nil, format("host %s could not be resolved: hosts_file %s: %s", host, hosts_file, err)
    end
    local wanted = host:lower()
    local v4, v6, seen = {}, {}, {}
    for line in handle:lines() do
        line = line:gsub("#.*", "")
        local address, names = line:match("^%s*(%S+)%s+(.-)%s*$")
        if address then
            for name in names:gmatch("%S+") do
                if name:lower() == wanted and not seen[address] then
                    seen[address] = true
                    if find(address, ":", 1, true) then
                        v6[#v6 + 1] = rules.ipv6_compressed(address) or address
                    else
                        v4[#v4 + 1] = address
                    end
                end
            end
        end
    end
    handle:close()
    for i = 1, #v6 do
        v4[#v4 + 1] = v6[i]
    end
    if #v4 == 0 then
        return nil, format("host %s could not be resolved: not in %s (DNS is not used)", host, hosts_file)
    end
    return v4
end

function _M.is_literal(host)
    return find(host, ":", 1, true) ~= nil or find(host, "^[0-9.]+$") ~= nil
end

function _M.resolve(host)
    if find(host, "%", 1, true) then
        return nil, format("%s has an IPv6 zone id, which nginx does not accept in a server address", host)
    end
    if _M.is_literal(host) then
        return { host }
    end
    if hosts_file then
        return from_hosts_file(host)
    end
    local hints = ffi.new("struct swallowkeeper_dyups_addrinfo")
    hints.ai_family = 0
    hints.ai_socktype = SOCK_STREAM
    local result = ffi.new("struct swallowkeeper_dyups_addrinfo *[1]")
    local rc = C.getaddrinfo(host, nil, hints, result)
    if rc ~= 0 then
        return nil, format("host %s could not be resolved: %s", host, ffi.string(C.gai_strerror(rc)))
    end
    local v4, v6, seen = {}, {}, {}
    local entry = result[0]
    while entry ~= nil do
        local text
        if entry.ai_family == AF_INET then
            text = ipv4_text(ffi.cast("struct swallowkeeper_dyups_sockaddr_in *", entry.ai_addr).sin_addr)
            if not seen[text] then
                v4[#v4 + 1] = text
            end
        elseif entry.ai_family == AF_INET6 then
            text = ipv6_text(ffi.cast("struct swallowkeeper_dyups_sockaddr_in6 *", entry.ai_addr).sin6_addr)
            if not seen[text] then
                v6[#v6 + 1] = text
            end
        end
        if text then
            seen[text] = true
        end
        entry = entry.ai_next
    end
    C.freeaddrinfo(result[0])
    for i = 1, #v6 do
        v4[#v4 + 1] = v6[i]
    end
    if #v4 == 0 then
        return nil, format("host %s has no IPv4 or IPv6 address", host)
    end
    return v4
end

return _M
