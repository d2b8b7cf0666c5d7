-- Argo CD health of a Slipway ModelVersion (Lua 5.1): Healthy once it mirrors the MLflow registry.
local hs = {status = "Progressing", message = "Waiting for the registry sync"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Synced" then
    if c.status == "True" then
      hs.status = "Healthy"
      hs.message = "Version " .. obj.spec.version .. " of " .. obj.spec.model .. " (" .. (obj.status.stage or "None") .. ")"
    elseif c.reason == "NotFound" then
      hs.status = "Degraded"
      hs.message = c.message or "Not found in MLflow"
    else
      hs.message = c.message or hs.message
    end
  end
end
return hs
