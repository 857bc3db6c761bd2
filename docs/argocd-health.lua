-- Argo CD health check for Backfill (milvusbackfill.io/v1alpha1).
-- Install: argocd-cm key `resource.customizations.health.milvusbackfill.io_Backfill`
-- (see docs/argocd/README.md). Tested by docs/argocd/test.sh.
--
--   status.observedGeneration < metadata.generation  -> Progressing (spec change not seen yet)
--   phase Succeeded                                   -> Healthy
--   phase Failed                                      -> Degraded (message from conditions)
--   phase Suspended                                   -> Suspended
--   anything else (no status, Pending, Planning, Running, unknown) -> Progressing
--
-- Argo CD runs this with gopher-lua (Lua 5.1): only base, string, table and math are used.
local hs = { status = "Progressing", message = "Waiting for the operator to pick up the Backfill" }

local function int(n)
  if type(n) == "number" then
    return string.format("%d", n)
  end
  return tostring(n)
end

-- The condition of type `t` with status "True", or nil.
local function trueCondition(status, t)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == t and c.status == "True" then
      return c
    end
  end
  return nil
end

local function conditionMessage(c)
  if c == nil then
    return nil
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  elseif message ~= "" then
    return message
  elseif reason ~= "" then
    return reason
  end
  return nil
end

local status = obj.status
if status == nil then
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. int(generation)
    .. " (observed " .. int(observed) .. ")"
  return hs
end

local progress = ""
if status.progress ~= nil and status.progress ~= "" then
  progress = " (" .. status.progress .. " segments)"
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Backfill succeeded" .. progress
  if status.rows ~= nil and status.rows.written ~= nil then
    hs.message = hs.message .. ", " .. int(status.rows.written) .. " rows written"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local msg = conditionMessage(trueCondition(status, "Failed"))
  if msg == nil and status.conditions ~= nil then
    -- No Failed condition: the last condition with a message explains it.
    for _, c in ipairs(status.conditions) do
      msg = conditionMessage(c) or msg
    end
  end
  hs.message = msg or ("Backfill failed" .. progress)
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = conditionMessage(trueCondition(status, "Suspended")) or ("Backfill suspended (spec.suspend)" .. progress)
elseif phase ~= nil then
  hs.message = "Backfill " .. phase .. progress
else
  hs.message = "Waiting for the operator to set a phase"
end
return hs
