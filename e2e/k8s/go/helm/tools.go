//go:build tools

// Package tools pins the helm CLI that e2e/k8s/build.sh builds from this module.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
