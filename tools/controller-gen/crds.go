// Package crds only pins the API types controller-gen reads (make test-k8s
// runs it on them); nothing imports it.
package crds

import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
