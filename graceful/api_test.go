package graceful

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"sort"
	"strings"
	"testing"
)

// apiBudget is the most exported identifiers (functions, types, constants,
// variables and methods of exported types; not struct fields) that graceful and
// activation together may have: an exported name is a promise to users, made only
// when they need it. Protocol plumbing lives in internal packages.
const apiBudget = 46

func exported(t *testing.T, dir string) []string {
	t.Helper()
	fset := token.NewFileSet()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, dir+"/"+e.Name(), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	seen := map[string]bool{}
	{
		for _, f := range files {
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					if !d.Name.IsExported() {
						continue
					}
					if d.Recv == nil {
						seen[d.Name.Name] = true
						continue
					}
					typ := d.Recv.List[0].Type
					if s, ok := typ.(*ast.StarExpr); ok {
						typ = s.X
					}
					if id, ok := typ.(*ast.Ident); ok && id.IsExported() {
						seen[id.Name+"."+d.Name.Name] = true
					}
				case *ast.GenDecl:
					for _, sp := range d.Specs {
						switch sp := sp.(type) {
						case *ast.TypeSpec:
							if sp.Name.IsExported() {
								seen[sp.Name.Name] = true
							}
						case *ast.ValueSpec:
							for _, n := range sp.Names {
								if n.IsExported() {
									seen[n.Name] = true
								}
							}
						}
					}
				}
			}
		}
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestAPIBudget(t *testing.T) {
	g, a := exported(t, "."), exported(t, "../activation")
	t.Logf("graceful exports %d: %s", len(g), strings.Join(g, " "))
	t.Logf("activation exports %d: %s", len(a), strings.Join(a, " "))
	if n := len(g) + len(a); n > apiBudget {
		t.Errorf("graceful and activation export %d identifiers; the budget is %d: keep new names unexported unless users need them", n, apiBudget)
	}
}
