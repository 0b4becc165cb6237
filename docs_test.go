package caddymesh

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryExportedIdentifierIsDocumented enforces the house rule that
// Caddy's module docs depend on: a doc comment on every exported
// identifier and on every exported field of an exported struct.
func TestEveryExportedIdentifierIsDocumented(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		file, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		if file.Name.Name == "main" {
			return nil
		}
		for _, missing := range undocumented(file) {
			t.Errorf("%s: %s has no doc comment", fset.Position(missing.Pos()), missing.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// undocumented returns the exported identifiers of file without a doc
// comment.
func undocumented(file *ast.File) []*ast.Ident {
	var missing []*ast.Ident
	for _, decl := range file.Decls {
		switch decl := decl.(type) {
		case *ast.FuncDecl:
			if decl.Name.IsExported() && decl.Doc == nil && (decl.Recv == nil || exportedReceiver(decl.Recv)) {
				missing = append(missing, decl.Name)
			}
		case *ast.GenDecl:
			for _, spec := range decl.Specs {
				missing = append(missing, undocumentedInSpec(spec, decl.Doc != nil && len(decl.Specs) == 1)...)
			}
		}
	}
	return missing
}

func undocumentedInSpec(spec ast.Spec, declDocumented bool) []*ast.Ident {
	var missing []*ast.Ident
	switch spec := spec.(type) {
	case *ast.TypeSpec:
		if spec.Name.IsExported() && spec.Doc == nil && !declDocumented {
			missing = append(missing, spec.Name)
		}
		if st, ok := spec.Type.(*ast.StructType); ok && spec.Name.IsExported() {
			for _, field := range st.Fields.List {
				for _, name := range field.Names {
					if name.IsExported() && field.Doc == nil {
						missing = append(missing, name)
					}
				}
			}
		}
	case *ast.ValueSpec:
		for _, name := range spec.Names {
			if name.IsExported() && spec.Doc == nil && !declDocumented {
				missing = append(missing, name)
			}
		}
	}
	return missing
}

func exportedReceiver(recv *ast.FieldList) bool {
	typ := recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	ident, ok := typ.(*ast.Ident)
	return ok && ident.IsExported()
}
