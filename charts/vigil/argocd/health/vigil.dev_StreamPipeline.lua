-- Argo CD health of a Vigil StreamPipeline (resource.customizations.health.vigil.dev_StreamPipeline).
-- Healthy: every detector ready on the current config. Progressing: the operator has not seen
-- this generation yet, detectors are rolling out, or a savepoint is being taken before an
-- upgrade. Degraded: invalid spec, a model or rule problem (Degraded=True), a failed upgrade
-- savepoint, or a rollout past its deadline (Progressing=False, ProgressDeadlineExceeded, after
-- 600 s), so a stuck rollout does not stay Progressing forever.
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
if c.Progressing ~= nil and c.Progressing.reason == "ProgressDeadlineExceeded" then
  return { status = "Degraded", message = c.Progressing.message }
end
if c.Ready ~= nil and c.Ready.reason == "SavepointFailed" then
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
