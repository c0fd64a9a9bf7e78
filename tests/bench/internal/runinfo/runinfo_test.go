package runinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	saved := os.Args
	defer func() { os.Args = saved }()
	os.Args = []string{"/tmp/x/bench", "-switch", "-out", "a b", "it's", ""}
	want := `cd tests/bench && go run . -switch -out 'a b' 'it'\''s' ''`
	if got := CommandLine("."); got != want {
		t.Errorf("CommandLine = %s\nwant %s", got, want)
	}
}

func TestLoadAvg(t *testing.T) {
	if f := strings.Fields(LoadAvg()); len(f) != 3 {
		t.Errorf("LoadAvg() = %q", LoadAvg())
	}
}

func TestReadJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.json")
	os.WriteFile(p, []byte(`{"a": 2}`), 0o644)
	v, err := ReadJSON[struct{ A int }](p)
	if err != nil || v.A != 2 {
		t.Errorf("ReadJSON = %+v, %v", v, err)
	}
	os.WriteFile(p, []byte(`{`), 0o644)
	if _, err := ReadJSON[struct{}](p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("bad JSON: %v", err)
	}
}
