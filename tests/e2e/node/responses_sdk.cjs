// The official `openai` Node SDK's Responses API against TruckLLM: create, the stream
// helper, and a tool loop with previous_response_id. Prints one JSON object with what it
// saw. Usage: node responses_sdk.cjs <base URL> <API key> <model alias>
const OpenAI = require("openai");

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 10000 });
const weather = {
  type: "function", name: "get_weather", description: "Current weather for a city.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  strict: false,
};

async function main() {
  const created = await client.responses.create({ model, input: "hello there" });
  const stream = client.responses.stream({ model, input: "hello there" });
  const types = [];
  for await (const event of stream) types.push(event.type);
  const streamed = await stream.finalResponse();
  const first = await client.responses.create({ model, input: "What is the weather in Paris?", tools: [weather] });
  const call = first.output.find((item) => item.type === "function_call");
  const second = await client.responses.create({
    model, previous_response_id: first.id, tools: [weather],
    input: [{ type: "function_call_output", call_id: call.call_id, output: "sunny" }],
  });
  console.log(JSON.stringify({
    created: { id: created.id, model: created.model, text: created.output_text, status: created.status },
    streamed: { text: streamed.output_text, types },
    call: { name: call.name, arguments: call.arguments },
    second: { text: second.output_text, previous: second.previous_response_id },
  }));
}

main().catch((error) => { console.error(String(error)); process.exit(1); });
