-- Argo CD health of a Slipway ModelDeployment (Lua 5.1, as gopher-lua runs it).
local hs = {status = "Progressing", message = "Waiting for the Slipway operator"}
if obj.status == nil then
  return hs
end
local st = obj.status
if st.observedGeneration ~= nil and obj.metadata.generation ~= nil and st.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "InvalidSpec" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = "Invalid spec: " .. (c.message or "")
      return hs
    end
    -- The API server refused a child (quota, admission) or did not answer: the rollout fields are
    -- the last pass that worked, so they must not read as Healthy or Progressing.
    if c.type == "ReconcileError" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = "Cannot reconcile: " .. (c.message or "")
      return hs
    end
  end
end
local phase = st.phase or ""
local canary = ""
if st.canaryVersion ~= nil then
  canary = "canary v" .. st.canaryVersion .. " at " .. (st.canaryWeight or 0) .. "%"
end
local decided = false -- an A/B test B lost: rolled back by decision, Degraded=False
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Degraded" and c.status == "False" then decided = true end
  end
end
if phase == "RolledBack" and decided then
  hs.status = "Healthy"
  hs.message = "Kept v" .. (st.stableVersion or "?") .. ": " .. (st.message or "")
elseif phase == "RolledBack" or phase == "RollingBack" then
  hs.status = "Degraded"
  hs.message = "Rolled back to v" .. (st.stableVersion or "?") .. ": " .. (st.message or "")
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused: " .. canary
elseif phase == "Progressing" or phase == "Promoting" then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. canary
elseif phase == "Succeeded" or phase == "Idle" then
  local ready = false
  local waiting = st.message or "Waiting for the stable version to be ready"
  if st.conditions ~= nil then
    for _, c in ipairs(st.conditions) do
      if c.type == "Ready" and c.status == "True" then ready = true end
      if c.type == "Ready" and c.status == "False" and c.message ~= nil and c.message ~= "" then waiting = c.message end
    end
  end
  if ready then
    hs.status = "Healthy"
    hs.message = "Serving v" .. (st.stableVersion or "?")
  else
    hs.message = waiting
  end
end
return hs
