/**
 * A small helper to emit ONNX nodes into a graph with unique names, handling operators whose
 * signature changed between opsets (axes as attribute or input).
 */
import type { AttributeProto, NodeProto, TensorProto } from "../onnx/types.js";
import { AttributeType } from "../onnx/types.js";
import { makeTensor } from "../onnx/tensor.js";
import { DataType } from "../onnx/dtype.js";

export type AttrValue = number | number[] | string;

export function attr(name: string, value: AttrValue, float = false): AttributeProto {
  if (typeof value === "string") return { name, type: AttributeType.STRING, s: Buffer.from(value, "utf8") };
  if (Array.isArray(value)) return float ? { name, type: AttributeType.FLOATS, floats: value } : { name, type: AttributeType.INTS, ints: value };
  return float ? { name, type: AttributeType.FLOAT, f: value } : { name, type: AttributeType.INT, i: value };
}

export class NodeEmitter {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  private counter = 0;

  /**
   * @param prefix unique prefix for every name this emitter creates
   * @param opset  the default-domain opset version of the target model
   */
  constructor(readonly prefix: string, readonly opset: number) {}

  name(hint: string): string {
    return `${this.prefix}/${hint}_${this.counter++}`;
  }

  node(op: string, inputs: string[], attributes: AttributeProto[] = [], outputName?: string): string {
    const out = outputName ?? this.name(op);
    this.nodes.push({ input: inputs, output: [out], name: this.name(`${op}_node`), op_type: op, ...(attributes.length ? { attribute: attributes } : {}) });
    return out;
  }

  constant(hint: string, dataType: number, dims: number[], data: Float32Array | BigInt64Array | Int32Array): string {
    const t = makeTensor(this.name(hint), dataType, dims, data);
    this.initializers.push(t);
    return t.name!;
  }

  /** A reduction over axes (all axes when empty): axes as attribute before the opset that made them an input. */
  reduce(op: "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin", input: string, axes: number[], keepdims: boolean): string {
    const inputFrom = op === "ReduceSum" ? 13 : 18;
    if (axes.length === 0) return this.node(op, [input], [attr("keepdims", keepdims ? 1 : 0)]);
    if (this.opset >= inputFrom) {
      const ax = this.constant("axes", DataType.INT64, [axes.length], BigInt64Array.from(axes, BigInt));
      return this.node(op, [input, ax], [attr("keepdims", keepdims ? 1 : 0)]);
    }
    return this.node(op, [input], [attr("axes", axes), attr("keepdims", keepdims ? 1 : 0)]);
  }

  unsqueeze(input: string, axes: number[]): string {
    if (this.opset >= 13) {
      const ax = this.constant("axes", DataType.INT64, [axes.length], BigInt64Array.from(axes, BigInt));
      return this.node("Unsqueeze", [input, ax]);
    }
    return this.node("Unsqueeze", [input], [attr("axes", axes)]);
  }
}

/** The default-domain opset version a model imports. */
export function defaultOpset(imports: Array<{ domain?: string; version?: unknown }> | undefined): number {
  const o = imports?.find((i) => !i.domain || i.domain === "ai.onnx");
  return o ? Number(String(o.version)) : 1;
}
