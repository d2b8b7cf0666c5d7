-- Which Slipway actions Argo CD offers on a ModelDeployment, and when they are enabled.
local actions = {}
local phase = ""
if obj.status ~= nil and obj.status.phase ~= nil then phase = obj.status.phase end
local live = phase == "Progressing" or phase == "Paused" or phase == "Promoting"
actions["promote"] = {disabled = not live}
actions["promote-full"] = {disabled = not live}
actions["abort"] = {disabled = not live}
actions["pause"] = {disabled = phase ~= "Progressing"}
actions["resume"] = {disabled = phase ~= "Paused"}
actions["retry"] = {disabled = phase ~= "RolledBack"}
return actions
