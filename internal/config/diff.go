package config

import (
	"reflect"
	"strings"
)

// Diff returns the keys, as written in the YAML file ("log.level",
// "contract.rules"), whose values differ between a and b. Lists and maps
// are compared whole and named by their own key.
func Diff(a, b Config) []string {
	var keys []string
	diff("", reflect.ValueOf(a), reflect.ValueOf(b), &keys)
	return keys
}

func diff(prefix string, a, b reflect.Value, keys *[]string) {
	if a.Kind() != reflect.Struct {
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*keys = append(*keys, prefix)
		}
		return
	}
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		key := prefix
		if !strings.Contains(opts, "inline") {
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			key = join(prefix, name)
		}
		diff(key, a.Field(i), b.Field(i), keys)
	}
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}
