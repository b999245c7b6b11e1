-- Argo CD health check for octoconn.dev/OctopusDeployConnection (docs/argocd.md).
-- Argo CD runs it without Lua's string library (no string.lower or :find), so it only compares whole strings.
local hs = {}
local metadata = obj.metadata or {}
local annotations = metadata.annotations or {}

local paused = annotations["octoconn.dev/paused"]
if paused == "true" or paused == "True" or paused == "TRUE" then
  hs.status = "Suspended"
  hs.message = "Paused by the annotation octoconn.dev/paused: the operator makes no calls to Octopus or Infisical."
  return hs
end

local status = obj.status
if status ~= nil and status.conditions ~= nil and metadata.deletionTimestamp ~= nil then
  -- Deleting moves metadata.generation on; while the finalizer waits, Ready says why (DeletionBlocked).
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" and condition.status == "False" and condition.reason == "DeletionBlocked" then
      hs.status = "Degraded"
      hs.message = condition.message
      return hs
    end
  end
  hs.status = "Progressing"
  hs.message = "Deleting: waiting for the operator to finish."
  return hs
end

if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile this connection."
  return hs
end

if status.observedGeneration == nil or status.observedGeneration ~= metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the latest change of this connection."
  return hs
end

local ready = nil
for _, condition in ipairs(status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the Ready condition."
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
elseif ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason or "Not ready"
else
  hs.status = "Progressing"
  hs.message = ready.message or ready.reason or "Ready is Unknown"
end
return hs
