-- Ask the Slipway operator to resume: it reads and clears this annotation.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["ml.slipway.dev/action"] = "resume"
return obj
