"""Cluster tier: tests against a real kube-apiserver (local etcd + kube-apiserver, or OCTOCONN_TEST_KUBECONFIG)."""
