-- wrk script for bench/preference_page.py. Run with one connection per thread
-- (wrk -t N -c N): each thread is one client, and its responses arrive in order.
--
--   BENCH_RESULT_FILE=... wrk ... -s bench/load.lua http://127.0.0.1:PORT -- MODE DATA_DIR POOL
--
-- MODE hello:     GET /; 200 with "Hello, World!" expected.
-- MODE get:       GET /p/<token>, round-robin over DATA_DIR/get-tokens.txt, no cookie (a first
--                 visit from an email); 200 with the preference form expected.
-- MODE post:      the submit without JavaScript: POST /p/<token> with the whole form, changing
--                 exactly one choice; 303 back to the page expected (the redirect is not
--                 followed: the next form's stamp comes from DATA_DIR, see bench/data.py).
-- MODE post-htmx: the same submit as htmx sends it (HX-Request: true); 200 with the updated
--                 form, the message of a real change and the next state's stamp expected.
--
-- POST modes use this thread's own contacts (DATA_DIR/POOL-<thread>.txt) and walk each through
-- eight changes: leave a list (applies at once), ask to join it again (a pending change and a
-- confirmation mail), for each of its lists, then stop marketing email and ask for it again.
-- A thread first opens its first contact's page, as a browser does (counted apart, as "setup").
-- A contact's page sets no cookie: its form's CSRF token is bound to the contact, not to a
-- session, so each contact's token comes with its line in DATA_DIR (the one its page shows).
--
-- Every response is classified; only the expected ones count. Latencies are timed here per
-- request (monotonic clock, from the request being written to the response being parsed) and
-- written with the counts by done() to BENCH_RESULT_FILE, for the Python driver to summarise.

-- The clock, setup(), count() and done(): bench/common.lua, beside this script.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local mode, started, expecting

local function read_lines(path)
  local lines = {}
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if line ~= "" then table.insert(lines, line) end
  end
  file:close()
  return lines
end

local function split(text, separator)
  local parts = {}
  for part in (text .. separator):gmatch("(.-)" .. separator) do table.insert(parts, part) end
  return parts
end

local function words(text)
  local parts = {}
  for part in text:gmatch("[^,]+") do table.insert(parts, part) end
  return parts
end

local function urlencode(text)
  return (text:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- GET mode: the tokens and the next one to open.
local tokens, next_token

-- POST modes: this thread's contacts, the current one and its steps.
local contacts, contact_index, contact, steps, step_index, withdrawn
local setup_done

local function load_contact(index)
  -- token <TAB> stamps <TAB> subscribed lists <TAB> the form's hidden fields (bench/data.py)
  local fields = split(contacts[index], "\t")
  contact = {
    token = fields[1], stamps = words(fields[2]), lists = words(fields[3] or ""),
    hidden = fields[4] or "", subscribed = {}, marketing_stopped = false,
  }
  steps = {}
  for _, slug in ipairs(contact.lists) do
    contact.subscribed[slug] = true
    table.insert(steps, { kind = "withdraw", list = slug })
    table.insert(steps, { kind = "request", list = slug })
  end
  table.insert(steps, { kind = "withdraw", marketing = true })
  table.insert(steps, { kind = "request", marketing = true })
  step_index, withdrawn = 1, 0
end

local exhausted = false

local function next_contact()
  contact_index = contact_index + 1
  if contact_index > #contacts then
    -- Out of fresh contacts: a further POST would change nothing, so this connection stops
    -- here. The others keep the server busy; the driver says how many stopped early.
    exhausted = true
    count("out-of-contacts")
    wrk.thread:stop()
    return
  end
  load_contact(contact_index)
end

function init(args)
  mode = args[1]
  if mode == "get" then
    tokens = read_lines(args[2] .. "/get-tokens.txt")
    next_token = ((thread_id - 1) * 7) % #tokens + 1
  elseif mode == "post" or mode == "post-htmx" then
    contacts = read_lines(args[2] .. "/" .. args[3] .. "-" .. thread_id .. ".txt")
    contact_index = 0
    setup_done = false
    next_contact()
  elseif mode ~= "hello" then
    error("unknown mode " .. tostring(mode))
  end
end

local function form_body(step)
  -- The stamp of the state the contact is in: one per withdrawal applied so far.
  local parts = { "stamp=" .. contact.stamps[withdrawn + 1] }
  for _, slug in ipairs(contact.lists) do
    local checked = contact.subscribed[slug]
    if step.list == slug then checked = (step.kind == "request") end
    if checked then table.insert(parts, urlencode("list:" .. slug) .. "=on") end
  end
  local stop = contact.marketing_stopped
  if step.marketing then stop = (step.kind == "withdraw") end
  if stop then table.insert(parts, "stop_marketing=on") end
  if contact.hidden ~= "" then table.insert(parts, contact.hidden) end
  -- What a browser sends: the button's name for a press of "Save my choices", which a grant
  -- needs with htmx; a withdrawal with htmx is a toggle, which sends the form without it.
  if mode == "post" or step.kind == "request" then table.insert(parts, "save=1") end
  return table.concat(parts, "&")
end

function request()
  started = now_us()
  if mode == "hello" then
    return wrk.format("GET", "/")
  elseif mode == "get" then
    local token = tokens[next_token]
    next_token = next_token % #tokens + 1
    return wrk.format("GET", "/p/" .. token)
  end
  if exhausted then
    return wrk.format("GET", "/") -- never read: the thread is stopping
  end
  if not setup_done then
    return wrk.format("GET", "/p/" .. contact.token)
  end
  expecting = steps[step_index]
  local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  if mode == "post-htmx" then
    headers["HX-Request"] = "true"
    headers["HX-Current-URL"] = "http://" .. wrk.host .. ":" .. wrk.port .. "/p/" .. contact.token
  end
  return wrk.format("POST", "/p/" .. contact.token, headers, form_body(expecting))
end

local function classify_post(status, headers, body)
  if mode == "post" then
    local location = headers["Location"] or headers["location"] or ""
    if status == 303 and location:find("/p/" .. contact.token, 1, true) then return "ok" end
  else
    local wanted = expecting.kind == "withdraw" and "Your changes are saved" or "Check your inbox"
    local next_stamp = contact.stamps[withdrawn + (expecting.kind == "withdraw" and 2 or 1)]
    if status == 200 and body:find(wanted, 1, true)
        and body:find('name="stamp" value="' .. next_stamp .. '"', 1, true) then
      return "ok"
    end
  end
  if status ~= 200 then return "status-" .. status end
  if body:find("Nothing changed", 1, true) then return "200-nothing-changed" end
  if body:find('class="stale"', 1, true) then return "200-stale-form" end
  if body:find("Please review and resubmit", 1, true) then return "200-form-refused" end
  return "200-unexpected-body"
end

function response(status, headers, body)
  local elapsed = now_us() - started
  if mode == "hello" then
    if status == 200 and body == "Hello, World!" then
      count("ok"); table.insert(latencies, elapsed)
    else
      count("status-" .. status)
    end
    return
  elseif mode == "get" then
    if status == 200 and body:find('name="stamp"', 1, true) then
      count("ok"); table.insert(latencies, elapsed)
    else
      count(status == 200 and "200-not-the-form" or "status-" .. status)
    end
    return
  end
  if not setup_done then
    if status == 200 and body:find('name="csrf_token"', 1, true) then
      count("setup-ok")
      setup_done = true
    else
      count("setup-status-" .. status)
    end
    return
  end
  if exhausted then return end
  local outcome = classify_post(status, headers, body)
  count(outcome)
  if outcome ~= "ok" then
    -- Out of step with the server: go on with a fresh contact rather than guess.
    next_contact()
    return
  end
  table.insert(latencies, elapsed)
  if expecting.kind == "withdraw" then
    withdrawn = withdrawn + 1
    if expecting.list then contact.subscribed[expecting.list] = false end
    if expecting.marketing then contact.marketing_stopped = true end
  end
  step_index = step_index + 1
  if step_index > #steps then next_contact() end
end
