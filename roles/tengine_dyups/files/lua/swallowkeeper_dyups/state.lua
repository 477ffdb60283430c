-- swallowkeeper_dyups.state: the upstreams in a lua_shared_dict, shared by all workers.
--
-- Keys of the dict (lua_shared_dict dyups_state 16m; by default):
--   "v"         version, a number; +1 on every change (POST or DELETE)
--   "u:<key>"   one upstream (upstream.encode), key = lower-case name
--   "j:<n>"     journal: "<version> <key>" of the change that made version n (slot n % "jn"), padded
--               with spaces to ENTRY_WIDTH bytes: every slot is written once at a fresh start and then
--               replaced in place, so a full dict never drops a journal entry
--   "jn"        the number of journal slots: JOURNAL, fewer in a small dict (journal_size())
--   "lock"      writers' mutex (add / delete, with an expiry in case a worker dies holding it)
--   "loaded"    set once the upstream file was loaded: a HUP reload keeps the dict and must not
--               load the file over what the interface changed since
--   "page"      the master's address of the version page (see version_cell()), unmapped at a reload
--
-- Workers keep a local copy (cache.lua) and compare the version on every request: a plain load
-- from a page the master maps shared before the fork (version_cell(); "v" once a second, and on
-- every request when there is no page). When it moved, they read the journal entries since their
-- own version and refresh only those upstreams; when they fell more than JOURNAL changes behind,
-- they reload everything.
--
-- init(options) is called from init_by_lua (in the master, at start and at every HUP; lua-nginx-module
-- does not run init_by_lua for `nginx -t`):
--   dict            name of the lua_shared_dict (default "dyups_state")
--   upstream_file   path of the upstream file to load at start (default: none)
--   lock_timeout    seconds a writer waits for another one before answering 409 (default 1)

local ffi = require("ffi")
local upstream = require("swallowkeeper_dyups.upstream")

local ngx = ngx
local format, sub, find, match, rep, tonumber = string.format, string.sub, string.find, string.match, string.rep,
    tonumber

local _M = {}

local JOURNAL = 1024
local ENTRY_WIDTH = 160        -- "<version> <key>": 16 digits, a space, a key of at most 128 bytes
local JOURNAL_SHARE = 1 / 64   -- a small dict gives the journal at most this share of its memory (~256 B a slot)
local LOCK_EXPIRY = 5

local config = { dict = "dyups_state", upstream_file = nil, lock_timeout = 1, hosts_file = nil }
local OPTIONS = { dict = true, upstream_file = true, lock_timeout = true, hosts_file = true }
_M.config = config
_M.JOURNAL = JOURNAL

local shared

-- The version again, in a page of memory the master maps shared before it forks the workers:
-- workers read it with a plain load on every request (no lock, no hashing); writers store it after
-- the dict. nil when mmap failed: readers then use the dict's "v".
pcall(ffi.cdef, [[
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
]])
local PAGE = 4096
local version_cell

-- A new page for this configuration's workers. The master unmaps the page of the configuration
-- before (its address is kept in the dict): the old workers keep their own mapping of it.
local function map_version_cell(dict)
    local PROT_READ, PROT_WRITE, MAP_SHARED, MAP_ANONYMOUS = 1, 2, 1, 0x20
    local ok, page = pcall(ffi.C.mmap, nil, PAGE, PROT_READ + PROT_WRITE, MAP_SHARED + MAP_ANONYMOUS, -1, 0)
    if not ok or page == nil or ffi.cast("intptr_t", page) == -1 then
        ngx.log(ngx.WARN, "dyups: no shared page for the version (", tostring(page), "); workers read the dict")
        return nil
    end
    local previous = dict:get("page")
    if previous then
        ffi.C.munmap(ffi.cast("void *", previous), PAGE)
    end
    dict:set("page", tonumber(ffi.cast("intptr_t", page)))
    return ffi.cast("double *", page)
end

-- The shared version cell (a double * whose [0] is the version), or nil.
function _M.version_cell()
    return version_cell
end

function _M.dict()
    if not shared then
        shared = ngx.shared[config.dict]
        if not shared then
            error(format("lua_shared_dict %s is not defined (swallowkeeper_dyups.state)", config.dict))
        end
    end
    return shared
end

function _M.version()
    return _M.dict():get("v") or 0
end

-- The number of journal slots of this dict (a dict kept from a release without "jn": JOURNAL).
local function journal_size(dict)
    return dict:get("jn") or JOURNAL
end

-- Keys changed after version `from` up to `to`, or nil when the journal does not reach back that far.
function _M.changes(from, to)
    local dict = _M.dict()
    local size = journal_size(dict)
    if to - from > size then
        return nil
    end
    local keys = {}
    for version = from + 1, to do
        local entry = dict:get("j:" .. (version % size))
        if not entry then
            return nil
        end
        local number, key = match(entry, "^(%d+) (%S+)")
        if tonumber(number) ~= version then
            return nil
        end
        keys[#keys + 1] = key
    end
    return keys
end

-- The encoded upstream stored under `key`, or nil.
function _M.get(key)
    return _M.dict():get("u:" .. key)
end

-- { key = encoded } of every stored upstream.
function _M.all()
    local dict = _M.dict()
    local out = {}
    local keys = dict:get_keys(0)
    for i = 1, #keys do
        local k = keys[i]
        if sub(k, 1, 2) == "u:" then
            local value = dict:get(k)
            if value then
                out[sub(k, 3)] = value
            end
        end
    end
    return out
end

local function journal_entry(version, key)
    local entry = version .. " " .. key
    return entry .. rep(" ", ENTRY_WIDTH - #entry)
end

local function publish(dict, key)
    local version = (dict:get("v") or 0) + 1
    local ok, err = dict:safe_set("j:" .. (version % journal_size(dict)), journal_entry(version, key))
    if not ok then
        -- workers that miss the entry reload everything: slower, still correct
        ngx.log(ngx.WARN, "dyups: journal entry for version ", version, " not stored: ", err)
    end
    dict:set("v", version)
    if version_cell then
        version_cell[0] = version
    end
    return version
end

-- Run fn(dict) holding the writers' lock; nil, "busy" when another writer held it for lock_timeout.
local function locked(fn)
    local dict = _M.dict()
    local deadline = ngx.now() + config.lock_timeout
    while true do
        local ok, err = dict:add("lock", ngx.worker.pid(), LOCK_EXPIRY)
        if ok then
            break
        end
        if err ~= "exists" then
            return nil, "the lock could not be taken: " .. tostring(err)
        end
        if ngx.now() >= deadline then
            return nil, "busy"
        end
        ngx.sleep(0.001)
        ngx.update_time()
    end
    local ok, result, err = pcall(fn, dict)
    dict:delete("lock")
    if not ok then
        return nil, result
    end
    return result, err
end

-- Store a record (create or replace). Returns the new version, or nil and "busy" / a reason.
-- `pause` (optional): passed to upstream.encode, which runs before the lock is taken.
function _M.put(record, pause)
    local key = upstream.key(record.name)
    local encoded = upstream.encode(record, pause)
    return locked(function(dict)
        local stored = dict:get("u:" .. key)
        local ok, err = dict:safe_set("u:" .. key, encoded)
        if not ok then
            local full = format("the shared dict %s is full (%s); give lua_shared_dict more memory", config.dict,
                                tostring(err))
            -- a value that does not fit where the stored one was frees the stored one before it finds
            -- no room: put it back (it fits where it was), so a refused write changes nothing
            if stored ~= nil and dict:get("u:" .. key) == nil then
                local kept, keep_err = dict:safe_set("u:" .. key, stored)
                if not kept then
                    publish(dict, key)   -- gone: every worker drops it alike
                    return nil, format("%s; the upstream %s it replaced is lost too (%s)", full, key,
                                       tostring(keep_err))
                end
            end
            return nil, full
        end
        return publish(dict, key)
    end)
end

-- Delete an upstream. Returns the new version, false when there was none, or nil and a reason.
function _M.delete(name)
    local key = upstream.key(name)
    return locked(function(dict)
        if dict:get("u:" .. key) == nil then
            return false
        end
        dict:delete("u:" .. key)
        return publish(dict, key)
    end)
end

local function read_file(path)
    local handle, err = io.open(path, "rb")
    if not handle then
        if find(err or "", "No such file", 1, true) then
            return ""
        end
        return nil, err
    end
    local text = handle:read("*a")
    handle:close()
    return text
end

-- Load the upstream file into an empty dict. Raises (so nginx refuses to start, naming the line)
-- when the file breaks the rules; logs and leaves out upstreams this flavor cannot take.
local function load_file(dict, path)
    local text, err = read_file(path)
    if not text then
        error(format("swallowkeeper_dyups: cannot read the upstream file %s: %s", path, err), 0)
    end
    local records, skipped = upstream.parse_file(text)
    if not records then
        error(format("swallowkeeper_dyups: the upstream file %s is not valid: %s", path, skipped), 0)
    end
    for i = 1, #skipped do
        ngx.log(ngx.ERR, "dyups: upstream \"", skipped[i][1], "\" of ", path, " left out: ", skipped[i][2])
    end
    for i = 1, #records do
        local record = records[i]
        local ok
        ok, err = dict:safe_set("u:" .. upstream.key(record.name), upstream.encode(record))
        if not ok then
            error(format("swallowkeeper_dyups: the shared dict %s is too small for %s: %s", config.dict, path,
                         tostring(err)), 0)
        end
    end
    return #records, #skipped
end

function _M.init(options)
    for key, value in pairs(options or {}) do
        if not OPTIONS[key] then
            error("swallowkeeper_dyups.state.init: unknown option " .. tostring(key), 2)
        end
        config[key] = value
    end
    -- hosts_file: resolve host names in server lines from this file only, never through DNS
    require("swallowkeeper_dyups.resolve").configure({ hosts_file = config.hosts_file })
    shared = nil
    local dict = _M.dict()
    version_cell = map_version_cell(dict)
    if dict:get("loaded") then
        if version_cell then
            version_cell[0] = _M.version()
        end
        local count = 0
        for _ in pairs(_M.all()) do
            count = count + 1
        end
        ngx.log(ngx.NOTICE, "dyups: kept ", count, " upstreams of the running configuration (version ",
                _M.version(), ")")
        return
    end
    -- the journal's slots, written once at their full width (replaced in place from now on)
    local size = JOURNAL
    local ok_capacity, capacity = pcall(dict.capacity, dict)
    if ok_capacity and type(capacity) == "number" then
        size = math.max(16, math.min(JOURNAL, math.floor(capacity * JOURNAL_SHARE / 256)))
    end
    dict:set("jn", size)
    for slot = 0, size - 1 do
        local ok, err = dict:safe_set("j:" .. slot, journal_entry(0, "-"))
        if not ok then
            error(format("swallowkeeper_dyups: the shared dict %s is too small for its journal: %s", config.dict,
                         tostring(err)), 0)
        end
    end
    local loaded, skipped = 0, 0
    if config.upstream_file and config.upstream_file ~= "" then
        loaded, skipped = load_file(dict, config.upstream_file)
        ngx.log(ngx.NOTICE, "dyups: loaded ", loaded, " upstreams from ", config.upstream_file,
                skipped > 0 and format(" (%d left out, see above)", skipped) or "")
    end
    dict:set("v", (dict:get("v") or 0) + 1)
    dict:set("loaded", true)
    if version_cell then
        version_cell[0] = _M.version()
    end
end

return _M
