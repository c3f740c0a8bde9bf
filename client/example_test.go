package client_test

import (
	"context"
	"log"
	"time"

	"github.com/tarsmq/tarsmq/client"
)

type transcript struct {
	Text string `json:"text"`
}

// The quick start: with MQTT_URL=unix:///run/tarsmq/tarsmq.sock and
// MQTT_CLIENT_ID=stt-worker in the environment, a service joins the bus,
// answers stt/request and says when it is ready.
func Example() {
	ctx := context.Background()
	c, err := client.FromEnv()
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	client.Handle(c, ctx, "stt/request", func(ctx context.Context, m client.Message, req transcript) error {
		return c.PublishEvent(ctx, "stt/final", "stt.final", transcript{Text: req.Text}, client.QoS(1))
	})
	c.PublishHealth(ctx, client.Health{OK: true, Event: "ready"})
}

// Request sends a request and waits for the reply, with a deadline.
func ExampleClient_Request() {
	c, _ := client.FromEnv()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := c.Request(ctx, "llm/request", "llm.request", map[string]string{"text": "what time is it?"})
	if err != nil {
		log.Fatal(err)
	}
	var answer transcript
	_ = m.Envelope.DecodeData(&answer)
	log.Println(answer.Text)
}

// Reply answers requests on a topic.
func ExampleClient_Reply() {
	c, _ := client.FromEnv()
	ctx := context.Background()
	c.Subscribe(ctx, "llm/request", func(ctx context.Context, m client.Message) error {
		return c.Reply(ctx, m, "llm.response", transcript{Text: "noon"})
	})
}
