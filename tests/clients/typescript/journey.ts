// The customer journey through the API with a client typed from the service's own
// OpenAPI document (generated/api.d.ts, made by openapi-typescript from the live
// /api/openapi.json). `tsc --strict` proves the document describes every request and
// response used here; running it against a live server proves the server agrees.
//
//   STOREFRONT_URL=http://127.0.0.1:8080 ADMIN_EMAIL=... ADMIN_PASSWORD=... node build/journey.js
import createClient from "openapi-fetch";

import type { components, paths } from "./generated/api.js";

type Problem = components["schemas"]["Problem"];

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
}

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`journey failed: ${what}`);
}

// Unwraps an openapi-fetch result: the typed body of a success, or a failure that
// names the step and shows the problem document the server sent.
function ok<T>(step: string, result: { data?: T; error?: unknown; response: Response }): T {
  if (result.data === undefined) {
    throw new Error(`${step}: HTTP ${result.response.status} ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

const api = createClient<paths>({ baseUrl: env("STOREFRONT_URL") });
const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });
const run = `${Date.now()}-${process.pid}`;

// The admin stocks the catalog.
const adminLogin = ok(
  "admin login",
  await api.POST("/api/users/login", { body: { email: env("ADMIN_EMAIL"), password: env("ADMIN_PASSWORD") } }),
);
const created = ok(
  "create product",
  await api.POST("/api/products", {
    body: { name: `Typed widget ${run}`, price: 1250, stock: 7, sku: `ts-${run}` },
    headers: bearer(adminLogin.access_token),
  }),
);
check(created.currency === "USD" && created.description === "", "product defaults");

// A customer registers (twice: the second is a typed 409 problem) and logs in.
const email = `ts-journey-${run}@example.com`;
const password = "typed-password-1";
const user = ok("register", await api.POST("/api/users/register", { body: { email, password, name: "Typed Customer" } }));
check(user.role === "customer" && user.email === email, "registered user");
const again = await api.POST("/api/users/register", { body: { email, password, name: "Again" } });
const duplicate: Problem | undefined = again.error;
check(again.response.status === 409 && duplicate?.status === 409, "duplicate email is a 409 problem");
const login = ok("login", await api.POST("/api/users/login", { body: { email, password } }));
check(login.token_type === "Bearer" && login.expires_in > 0, "token shape");
const auth = bearer(login.access_token);

// The customer finds the product in the catalog.
const page = ok(
  "list products",
  await api.GET("/api/products", { params: { query: { q: `Typed widget ${run}`, limit: 10, sort: "-price" } } }),
);
const listed = page.items.find((product) => product.id === created.id);
check(listed !== undefined && listed.stock === 7 && page.next_cursor === null, "product listed");

// Orders two, pays with an Idempotency-Key, and reads the payment back.
const order = ok(
  "create order",
  await api.POST("/api/orders", { body: { items: [{ product_id: listed.id, quantity: 2 }] }, headers: auth }),
);
check(order.status === "pending" && order.total === 2500 && order.expires_at !== null, "pending order");
const paid = ok(
  "pay",
  await api.POST("/api/payments", {
    params: { header: { "Idempotency-Key": `ts-${run}` } },
    body: { order_id: order.id, payment_method: { type: "card", token: "tok_visa" } },
    headers: auth,
  }),
);
check(paid.status === "succeeded" && paid.amount === order.total, "payment succeeded");
const payment = ok(
  "read payment",
  await api.GET("/api/payments/{id}", { params: { path: { id: paid.id } }, headers: auth }),
);
check(payment.id === paid.id && payment.order_id === order.id && payment.failure_reason === null, "payment read back");
const after = ok("read order", await api.GET("/api/orders/{id}", { params: { path: { id: order.id } }, headers: auth }));
check(after.status === "paid" && after.expires_at === null, "order paid");

console.log(JSON.stringify({ journey: "ok", product: created.id, order: order.id, payment: payment.id }));
