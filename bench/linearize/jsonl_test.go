package linearize

import (
	"bytes"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

func TestJSONLRoundTrip(t *testing.T) {
	ops := genHistory(rand.New(rand.NewSource(3)), defaultGen)
	ops[0].Reply = "1 VAL 3 with spaces and \"quotes\"\n"
	var buf bytes.Buffer
	if err := WriteJSONL(&buf, ops); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSONL(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ops) {
		t.Fatal("history changed in a round trip through JSON Lines")
	}
}

func TestReadJSONLNamesTheBadLine(t *testing.T) {
	_, err := ReadJSONL(strings.NewReader("{\"ID\":1}\n{oops\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("got %v, want an error naming line 2", err)
	}
}
