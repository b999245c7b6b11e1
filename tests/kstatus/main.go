// Command kstatus computes what Flux shows for a resource: kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the
// library Flux's kustomize-controller uses for `wait: true` and `healthChecks`, over the cases of a kstatus_test.yaml,
// and prints one JSON line per case. It exits 1 when a case differs and 2 when it cannot run at all.
//
//	kstatus -tests tests/kstatus/kstatus_test.yaml
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type testFile struct {
	Tests []struct {
		InputPath string  `json:"inputPath"`
		Want      verdict `json:"want"`
	} `json:"tests"`
}

type result struct {
	InputPath string   `json:"inputPath"`
	Want      verdict  `json:"want"`
	Got       *verdict `json:"got,omitempty"`
	Error     string   `json:"error,omitempty"`
	OK        bool     `json:"ok"`
}

func main() {
	testsPath := flag.String("tests", "", "a kstatus_test.yaml; a relative inputPath is relative to it")
	flag.Parse()
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
	failed := false
	out := json.NewEncoder(os.Stdout)
	for _, c := range cases.Tests {
		r := result{InputPath: c.InputPath, Want: c.Want}
		path := c.InputPath
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(*testsPath), path)
		}
		got, err := compute(path)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Got = got
			r.OK = *got == c.Want
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

func compute(path string) (*verdict, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// Through JSON into Unstructured, as an API client decodes it: numbers become int64, which kstatus expects.
	data, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	res, err := status.Compute(u)
	if err != nil {
		return nil, err
	}
	return &verdict{Status: res.Status.String(), Message: res.Message}, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(2)
}
