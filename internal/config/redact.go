package config

import (
	"reflect"
)

// Redacted is what a secret prints as.
const Redacted = "[redacted]"

// Redact returns a copy of v (a struct or pointer to one) in which every
// non-empty string field tagged `secret:"true"`, at any depth, reads Redacted.
// `tarsmq config` prints the effective configuration through it.
func Redact[T any](v T) T {
	out := reflect.ValueOf(&v).Elem()
	redactValue(out)
	return v
}

func redactValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			c := reflect.New(v.Elem().Type())
			c.Elem().Set(v.Elem())
			redactValue(c.Elem())
			v.Set(c)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range v.NumField() {
			f := v.Field(i)
			if !f.CanSet() {
				continue
			}
			if t.Field(i).Tag.Get("secret") == "true" && f.Kind() == reflect.String && f.String() != "" {
				f.SetString(Redacted)
				continue
			}
			redactValue(f)
		}
	case reflect.Slice:
		if v.IsNil() {
			return
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(c, v)
		for i := range c.Len() {
			redactValue(c.Index(i))
		}
		v.Set(c)
	case reflect.Map:
		if v.IsNil() {
			return
		}
		c := reflect.MakeMapWithSize(v.Type(), v.Len())
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			redactValue(e)
			c.SetMapIndex(k, e)
		}
		v.Set(c)
	}
}
