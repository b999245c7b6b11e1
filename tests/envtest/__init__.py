"""A real Kubernetes control plane for tests: etcd + kube-apiserver built from Go modules.

Modelled on controller-runtime's envtest: two local processes, secure serving with a generated CA, an admin
client certificate, service-account signing keys and RBAC. See ``binaries`` (build and cache) and
``controlplane`` (start and stop).
"""
