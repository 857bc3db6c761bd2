// Package kstatus checks what Flux, kpt and `kubectl wait` conclude about each sample Backfill:
// it runs the real kstatus library (fluxcd/cli-utils pkg/kstatus/status, the one Flux's
// kustomize-controller uses for `wait: true` health checks) on ../testdata/*.yaml and
// compares the result with ../kstatus_test.yaml, as ../health_test.yaml does for Argo CD.
package kstatus

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

type expectation struct {
	InputPath string `json:"inputPath"`
	Status    string `json:"status"`
}

type expectations struct {
	Tests []expectation `json:"tests"`
}

func load(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
}

// sample reads a Backfill as the API server would hand it to a client (integers as int64).
func sample(t *testing.T, path string) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return u
}

func TestEverySampleHasTheDocumentedKstatus(t *testing.T) {
	var want expectations
	load(t, "../kstatus_test.yaml", &want)
	samples, err := filepath.Glob("../testdata/*.yaml")
	if err != nil || len(samples) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	if len(want.Tests) != len(samples) {
		t.Fatalf("%d samples but %d expectations: every sample needs one", len(samples), len(want.Tests))
	}
	for _, tc := range want.Tests {
		res, err := status.Compute(sample(t, filepath.Join("..", tc.InputPath)))
		if err != nil {
			t.Errorf("%s: %v", tc.InputPath, err)
			continue
		}
		if string(res.Status) != tc.Status {
			t.Errorf("%s: kstatus %s (%s), want %s", tc.InputPath, res.Status, res.Message, tc.Status)
		} else {
			t.Logf("ok %s: %s (%s)", tc.InputPath, res.Status, res.Message)
		}
	}
}
