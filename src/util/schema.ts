/**
 * A small JSON Schema (2020-12) checker for the subset ee-tool's schemas use: type (with null and
 * integer), const, enum, pattern, minimum, maximum, required, properties, additionalProperties
 * (boolean or schema), items, $ref to #/$defs. Returns the list of violations.
 */
export type Schema = Record<string, unknown>;

export function validate(value: unknown, schema: Schema, root: Schema = schema, at = "$"): string[] {
  if (typeof schema.$ref === "string") {
    const name = schema.$ref.replace("#/$defs/", "");
    return validate(value, (root.$defs as Record<string, Schema>)[name]!, root, at);
  }
  const errors: string[] = [];
  const types = schema.type === undefined ? undefined : Array.isArray(schema.type) ? (schema.type as string[]) : [schema.type as string];
  const typeOf = (v: unknown): string => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);
  if (types) {
    const t = typeOf(value);
    const ok = types.some((want) => want === t || (want === "integer" && typeof value === "number" && Number.isInteger(value)));
    if (!ok) return [`${at}: expected ${types.join("|")}, got ${t}`];
  }
  if ("const" in schema && value !== schema.const) errors.push(`${at}: expected ${JSON.stringify(schema.const)}`);
  if (Array.isArray(schema.enum) && !schema.enum.includes(value)) errors.push(`${at}: not one of ${JSON.stringify(schema.enum)}`);
  if (typeof value === "string" && typeof schema.pattern === "string" && !new RegExp(schema.pattern).test(value)) errors.push(`${at}: does not match ${schema.pattern}`);
  if (typeof value === "number") {
    if (typeof schema.minimum === "number" && value < schema.minimum) errors.push(`${at}: below ${schema.minimum}`);
    if (typeof schema.maximum === "number" && value > schema.maximum) errors.push(`${at}: above ${schema.maximum}`);
  }
  if (typeOf(value) === "object") {
    const obj = value as Record<string, unknown>;
    for (const r of (schema.required as string[] | undefined) ?? []) if (!(r in obj)) errors.push(`${at}: missing '${r}'`);
    const props = (schema.properties as Record<string, Schema> | undefined) ?? {};
    for (const [k, v] of Object.entries(obj)) {
      if (props[k]) errors.push(...validate(v, props[k]!, root, `${at}.${k}`));
      else if (schema.additionalProperties === false) errors.push(`${at}: unexpected '${k}'`);
      else if (typeof schema.additionalProperties === "object") errors.push(...validate(v, schema.additionalProperties as Schema, root, `${at}.${k}`));
    }
  }
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => errors.push(...validate(v, schema.items as Schema, root, `${at}[${i}]`)));
  return errors;
}
