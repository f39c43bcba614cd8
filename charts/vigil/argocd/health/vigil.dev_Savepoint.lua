-- Argo CD health of a Vigil Savepoint (resource.customizations.health.vigil.dev_Savepoint).
-- A savepoint is taken once: Completed is Healthy, Failed is Degraded (create another to
-- retry), anything before is Progressing.
if obj.status ~= nil and obj.status.phase == "Completed" then
  return { status = "Healthy", message = "Savepoint written to " .. (obj.status.location or "its location") }
end
if obj.status ~= nil and obj.status.phase == "Failed" then
  return { status = "Degraded", message = obj.status.message or "Savepoint failed" }
end
return { status = "Progressing", message = "Savepoint in progress" }
