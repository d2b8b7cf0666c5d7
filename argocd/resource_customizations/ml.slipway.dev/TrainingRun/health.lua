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
end
hs.message = msg
return hs
