/**
 * Request validators compiled on a route's first request instead of at start-up: Fastify's
 * own compiler (@fastify/ajv-compiler, the options the server passes), each schema compiled
 * once, when first needed. Start-up then does not compile the schemas of every route (a
 * tenth of it, on a coordinator that restarts to resume in-doubt transactions).
 */
import AjvCompiler from '@fastify/ajv-compiler';

type BuildValidator = ReturnType<typeof AjvCompiler>;
type Compile = ReturnType<BuildValidator>;
type Validate = ReturnType<Compile>;

const fastifyCompiler = AjvCompiler();

export const lazyValidators: BuildValidator = (externalSchemas, options) => {
  const compile = fastifyCompiler(externalSchemas, options);
  return (route) => {
    let validate: Validate | undefined;
    // Fastify reads a failed validation's errors from the function it was given.
    const lazy = ((data: unknown) => {
      validate ??= compile(route);
      const valid = validate(data);
      lazy.errors = validate.errors;
      return valid;
    }) as Validate;
    return lazy;
  };
};
