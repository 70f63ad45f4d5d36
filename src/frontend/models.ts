/** The served models as clients see them: `GET /v1/models`, and `model` in a request body. */
import type { ModelCard, Router } from "../router/router.ts";
import { ApiError } from "./errors.ts";

/** The card of a served model; 404 for a name nobody serves, 503 while no model is served. */
export function findModel(router: Router, name: string): ModelCard {
  const models = router.models();
  const card = models.find((m) => m.name === name);
  if (card !== undefined) return card;
  if (models.length === 0) throw ApiError.noWorkers(`no worker is serving any model right now (asked for '${name}')`);
  throw ApiError.modelNotFound(name);
}

export function modelListJson(router: Router, createdS: number): string {
  return JSON.stringify({ object: "list", data: router.models().map((m) => modelJson(m, createdS)) });
}

export function modelJson(card: ModelCard, createdS: number): Record<string, unknown> {
  return { id: card.name, object: "model", created: createdS, owned_by: "switchyard", root: card.name, parent: null, max_model_len: card.maxModelLen };
}
