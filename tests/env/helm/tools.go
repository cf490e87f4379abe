//go:build tools

// Package tools pins the Helm the test environment builds.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
