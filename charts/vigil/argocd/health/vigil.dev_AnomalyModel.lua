-- Argo CD health of a Vigil AnomalyModel (resource.customizations.health.vigil.dev_AnomalyModel).
-- Healthy: the model server serves the spec's revision. Progressing: not observed yet, starting,
-- or a new revision rolling out. Degraded: invalid spec, artifact missing or failing its
-- digest, a model-server rollout the Deployment reports stuck (its progress deadline), or a
-- rollout candidate that failed its analysis (Degraded reason RolloutFailed). A candidate under
-- analysis is Progressing (reason Analysing).
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local c = {}
for _, condition in ipairs(obj.status.conditions) do
  c[condition.type] = condition
end
if c.Degraded ~= nil and c.Degraded.status == "True" then
  return { status = "Degraded", message = c.Degraded.message }
end
if c.Ready ~= nil and c.Ready.status == "False"
    and (c.Ready.reason == "InvalidSpec" or c.Ready.reason == "ArtifactUnavailable") then
  return { status = "Degraded", message = c.Ready.message }
end
if c.Progressing ~= nil and c.Progressing.status == "True" then
  return { status = "Progressing", message = c.Progressing.message }
end
if c.Ready ~= nil and c.Ready.status == "True" then
  return { status = "Healthy", message = c.Ready.message }
end
if c.Ready ~= nil then
  hs.message = c.Ready.message
end
return hs
