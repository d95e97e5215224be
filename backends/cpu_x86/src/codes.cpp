// Names of the codes in common.hpp, in enum order; exported to Python, which encodes ops with
// the position of a name in these lists.
#include "common.hpp"

namespace walle {

const std::vector<std::string>& unary_fn_names() {
  static const std::vector<std::string> names = {
      "identity", "neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "reciprocal", "floor", "ceil",
      "round", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
      "tanh", "erf", "not", "relu", "leaky_relu", "clip", "sigmoid", "hard_sigmoid", "hard_swish", "elu",
      "softplus"};
  return names;
}

const std::vector<std::string>& binary_fn_names() {
  static const std::vector<std::string> names = {
      "add", "sub", "mul", "div", "pow", "max", "min", "mod", "fmod", "eq", "ne", "lt", "le", "gt", "ge",
      "and", "or", "xor", "bit_and", "bit_or", "bit_xor", "shl", "shr"};
  return names;
}

const std::vector<std::string>& reduce_fn_names() {
  static const std::vector<std::string> names = {"sum", "mean", "max", "min", "prod"};
  return names;
}

const std::vector<std::string>& op_names() {
  static const std::vector<std::string> names = {
      "raster", "unary", "binary", "select", "cast", "reduce", "arg_reduce", "cumulative", "topk",
      "matmul", "conv2d", "pool2d", "gather", "scatter"};
  return names;
}

}  // namespace walle
