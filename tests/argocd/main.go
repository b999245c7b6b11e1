// Command argocd-health runs an Argo CD health script through Argo CD's own Lua VM (util/lua, the code that
// evaluates resource.customizations.health.* in argocd-cm) over the cases of a health_test.yaml in Argo CD's
// layout, and prints one JSON line per case. It exits 1 when a case differs and 2 when it cannot run at all.
//
//	argocd-health -script deploy/argocd/health.lua -tests tests/argocd/health_test.yaml
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// healthStatus is gitops-engine's health.HealthStatus by its JSON fields: the package moved into Argo CD's own
// repository after v3.2, and naming no type of it lets one main.go build against both (tests/envtest/binaries.py).
type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

type testFile struct {
	Tests []struct {
		InputPath    string       `json:"inputPath"`
		HealthStatus healthStatus `json:"healthStatus"`
	} `json:"tests"`
}

type result struct {
	InputPath string        `json:"inputPath"`
	Want      healthStatus  `json:"want"`
	Got       *healthStatus `json:"got,omitempty"`
	Error     string        `json:"error,omitempty"`
	OK        bool          `json:"ok"`
}

func main() {
	scriptPath := flag.String("script", "", "the health.lua to run")
	testsPath := flag.String("tests", "", "a health_test.yaml (Argo CD's layout); inputPath is relative to it")
	groupKind := flag.String("group-kind", "octoconn.dev/OctopusDeployConnection", "resource override key")
	flag.Parse()
	script, err := os.ReadFile(*scriptPath)
	if err != nil {
		fail(err)
	}
	raw, err := os.ReadFile(*testsPath)
	if err != nil {
		fail(err)
	}
	var cases testFile
	if err := yaml.Unmarshal(raw, &cases); err != nil {
		fail(err)
	}
	if len(cases.Tests) == 0 {
		fail(fmt.Errorf("%s has no tests", *testsPath))
	}
	// As argocd-cm's resource.customizations.health.<group>_<kind> reaches the VM: a resource override, run with
	// the libraries Argo CD opens by default (useOpenLibs false).
	vm := lua.VM{ResourceOverrides: map[string]v1alpha1.ResourceOverride{*groupKind: {HealthLua: string(script)}}}
	failed := false
	out := json.NewEncoder(os.Stdout)
	for _, c := range cases.Tests {
		r := result{InputPath: c.InputPath, Want: c.HealthStatus}
		got, err := run(vm, filepath.Join(filepath.Dir(*testsPath), c.InputPath))
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Got = got
			r.OK = got.Status == c.HealthStatus.Status && got.Message == c.HealthStatus.Message
		}
		failed = failed || !r.OK
		if err := out.Encode(r); err != nil {
			fail(err)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func run(vm lua.VM, path string) (*healthStatus, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: obj}
	script, useOpenLibs, err := vm.GetHealthScript(u)
	if err != nil {
		return nil, err
	}
	if script == "" {
		return nil, fmt.Errorf("no health script for %s", u.GroupVersionKind())
	}
	vm.UseOpenLibs = useOpenLibs
	got, err := vm.ExecuteHealthLua(u, script)
	if err != nil {
		return nil, err
	}
	return &healthStatus{Status: string(got.Status), Message: got.Message}, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "argocd-health:", err)
	os.Exit(2)
}
