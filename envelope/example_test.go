package envelope_test

import (
	"fmt"
	"time"

	"github.com/tarsmq/tarsmq/envelope"
)

func ExampleNew() {
	type final struct {
		Text string `json:"text"`
	}
	e, err := envelope.New("stt.final", "stt-worker", final{Text: "hello"},
		envelope.WithID("9f1c2b3a4d5e4f60a1b2c3d4e5f60718"),
		envelope.WithTime(time.Unix(1729123456, 789000000)),
		envelope.WithCorrelate("conv-001"))
	if err != nil {
		panic(err)
	}
	b, _ := e.Marshal()
	fmt.Println(string(b))
	// Output:
	// {"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"stt.final","ts":1729123456.789,"source":"stt-worker","data":{"text":"hello"},"correlate":"conv-001"}
}

func ExampleDecode() {
	e, err := envelope.Parse([]byte(`{"id":"1","type":"stt.final","ts":1729123456.5,"source":"stt-worker","data":{"text":"hello"}}`))
	if err != nil {
		panic(err)
	}
	type final struct {
		Text string `json:"text"`
	}
	f, err := envelope.Decode[final](e)
	fmt.Println(f.Text, err)
	// Output: hello <nil>
}

func ExampleValidate() {
	err := envelope.Validate([]byte(`{"id":"1","type":"stt.final","timestamp":1729123456.5,"source":"stt-worker","data":{}}`))
	fmt.Println(err)
	// Output: envelope: field "ts": is missing, and "timestamp" is present: the envelope's time field is named "ts"
}
