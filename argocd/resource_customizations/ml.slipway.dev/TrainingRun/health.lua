-- Argo CD health of a Slipway TrainingRun (Lua 5.1).
local hs = {status = "Progressing", message = "Pending"}
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local phase = obj.status.phase
local msg = obj.status.message or phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  if obj.status.modelVersion ~= nil then
    msg = "Registered " .. tostring(obj.status.modelVersion)
  end
elseif phase == "Failed" or phase == "Rejected" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
  -- The API server refuses the Job (quota, admission) or does not answer: Ready=False, ReconcileFailed.
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Ready" and c.status == "False" and c.reason == "ReconcileFailed" then
        hs.status = "Degraded"
        msg = c.message or msg
      end
    end
  end
end
hs.message = msg
return hs
